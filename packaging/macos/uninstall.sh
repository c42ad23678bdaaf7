#!/bin/sh
# Removes what the ondevice .pkg installed (run with sudo). Each user's data directory
# (~/Library/Application Support/ondevice) is kept: delete it yourself to remove keys and models.
set -eu
[ "$(id -u)" -eq 0 ] || { echo "run with sudo: sudo $0" >&2; exit 1; }
label=com.ondevice.daemon
uid=$(stat -f %u /dev/console 2>/dev/null || echo 0)
[ "$uid" -eq 0 ] || launchctl bootout "gui/$uid/$label" 2>/dev/null || true
rm -f /Library/LaunchAgents/com.ondevice.daemon.plist /usr/local/bin/ondevice \
    /usr/local/share/man/man1/ondevice.1 /usr/local/share/man/man1/ondevice-*.1 \
    /usr/local/share/zsh/site-functions/_ondevice /usr/local/etc/bash_completion.d/ondevice \
    /usr/local/share/fish/vendor_completions.d/ondevice.fish
rm -rf /usr/local/share/ondevice
pkgutil --forget com.ondevice.pkg >/dev/null 2>&1 || true
echo "ondevice removed; data directories in ~/Library/Application Support/ondevice are kept"

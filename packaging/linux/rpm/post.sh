# shellcheck shell=sh
# ondevice .rpm %post ($1 = 1 on install, 2 on upgrade). No rpm macros are expanded here, so this
# is what %systemd_post does, written out: apply the preset (Fedora/RHEL presets leave services
# disabled unless a preset enables them), never start on install.
install -d -o ondevice -g ondevice -m 0750 /var/lib/ondevice
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl --no-reload preset ondevice.service >/dev/null 2>&1 || :
    fi
fi
exit 0

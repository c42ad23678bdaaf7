# shellcheck shell=sh
# ondevice .rpm %preun ($1 = 0 on erase): stop and disable the service (%systemd_preun).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now ondevice.service >/dev/null 2>&1 || :
fi
exit 0

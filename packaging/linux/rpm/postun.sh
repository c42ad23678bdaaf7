# shellcheck shell=sh
# ondevice .rpm %postun ($1 = 1 on upgrade): reload units, restart a running service on upgrade
# (%systemd_postun_with_restart). /var/lib/ondevice and the user are kept (docs/install.md).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart ondevice.service >/dev/null 2>&1 || :
    fi
fi
exit 0

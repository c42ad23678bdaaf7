# shellcheck shell=sh
# ondevice .rpm %pre: the system user that runs the service (home: the state directory).
getent group ondevice >/dev/null || groupadd --system ondevice
getent passwd ondevice >/dev/null || useradd --system --gid ondevice --home-dir /var/lib/ondevice \
    --no-create-home --shell /usr/sbin/nologin --comment "ondevice daemon" ondevice
exit 0

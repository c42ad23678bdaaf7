#!/usr/bin/env bash
# Installer smoke test inside a container (installer-smoke.yml): install the package, run the
# installed `ondevice --version`, start the daemon as the systemd unit would (user ondevice,
# state in /var/lib/ondevice; containers have no systemd), GET /healthz, uninstall, check the
# binary and the unit are gone.   usage: smoke-linux.sh deb|rpm PACKAGE_FILE
set -euo pipefail
kind=$1
pkg=$(realpath "$2")
case "$kind" in
  deb) apt-get install -y "$pkg" ;;
  rpm) dnf install -y "$pkg" ;;
  *) echo "usage: smoke-linux.sh deb|rpm FILE" >&2; exit 2 ;;
esac
ondevice --version
ondevice config check /etc/ondevice/config.toml
home=/var/lib/ondevice
setpriv --reuid=ondevice --regid=ondevice --init-groups --no-new-privs \
  env ONDEVICE_HOME="$home" ONDEVICE_CONFIG=/etc/ondevice/config.toml ONDEVICE_LISTEN=127.0.0.1:0 \
  /usr/bin/ondevice serve &
pid=$!
for _ in $(seq 1 150); do
  [ -s "$home/listen.addr" ] && break
  sleep 0.2
done
addr=$(tr -d '[:space:]' <"$home/listen.addr")
curl -fsS "http://$addr/healthz"
echo
kill -TERM "$pid"
wait "$pid"
case "$kind" in
  deb) apt-get purge -y ondevice ;;
  rpm) dnf remove -y ondevice ;;
esac
for f in /usr/bin/ondevice /usr/lib/systemd/system/ondevice.service; do
  if [ -e "$f" ]; then echo "still installed: $f" >&2; exit 1; fi
done
echo "smoke test passed ($kind)"

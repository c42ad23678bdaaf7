#!/usr/bin/env bash
# Installs (or names) what building, testing and packaging ondevice need beyond Rust and Python.
#
#   scripts/prereqs.sh build        cmake, clang, libclang (llama.cpp and its bindings), curl
#   scripts/prereqs.sh test         build + bubblewrap, firejail (sandbox tests), chromium and
#                                   chromium-driver (web console browser tests), cargo-nextest
#   scripts/prereqs.sh deb|rpm|msi  build + the packaging tool (cargo-deb, cargo-generate-rpm, wixl)
#
# As root on Debian/Ubuntu (apt-get) missing system packages are installed; anywhere else the
# script prints the exact packages to install and exits 1 before anything is built. Cargo tools
# are installed with `cargo install --locked` (crates.io), which needs no root.
# scripts/demo.sh, scripts/test.sh (so .ci/run) and packaging/build.sh call it first.
set -euo pipefail

want=${1:-build}
case "$want" in
  build | test | deb | rpm | msi) ;;
  *)
    echo "usage: scripts/prereqs.sh build|test|deb|rpm|msi" >&2
    exit 2
    ;;
esac

# Debian package name -> the check that says it is present.
apt_missing=()
need() { # need PACKAGE CHECK...
  local pkg=$1
  shift
  "$@" >/dev/null 2>&1 || apt_missing+=("$pkg")
}
has_libclang() {
  local f
  for f in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang*.so* /usr/lib64/libclang.so*; do
    [ -e "$f" ] && return 0
  done
  return 1
}

# llama.cpp (crate llama-cpp-sys-2) is built with CMake; bindgen needs libclang.
need cmake command -v cmake
need clang command -v clang
need libclang-dev has_libclang
need curl command -v curl
case "$want" in
  test)
    need bubblewrap command -v bwrap
    need firejail command -v firejail
    # The egress e2e tests run in a private network namespace (unshare) with an address of their
    # own (ip).
    need iproute2 sh -c 'command -v ip || test -x /usr/sbin/ip || test -x /sbin/ip'
    need util-linux command -v unshare
    # The pgvector TLS test runs Debian's PostgreSQL with TLS on (pgserver's build has no OpenSSL).
    need postgresql sh -c 'ls /usr/lib/postgresql/*/bin/postgres'
    # The web console's browser tests (e2e `ui::`) drive Debian's Chromium through its driver.
    need chromium sh -c 'command -v chromium || test -x /usr/bin/chromium'
    need chromium-driver sh -c 'command -v chromedriver || test -x /usr/bin/chromedriver'
    ;;
  msi) need wixl command -v wixl ;;
esac

# Cargo tools, pinned (crate@version).
CARGO_DEB=cargo-deb@3.8.0
CARGO_GENERATE_RPM=cargo-generate-rpm@0.21.1
cargo_missing=()
case "$want" in
  test) command -v cargo-nextest >/dev/null 2>&1 || cargo_missing+=(cargo-nextest) ;;
  deb) command -v cargo-deb >/dev/null 2>&1 || cargo_missing+=("$CARGO_DEB") ;;
  rpm) command -v cargo-generate-rpm >/dev/null 2>&1 || cargo_missing+=("$CARGO_GENERATE_RPM") ;;
esac

if [ ${#apt_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "prereqs: installing ${apt_missing[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
  else
    {
      echo "prereqs: missing system packages for '$want': ${apt_missing[*]}"
      if command -v apt-get >/dev/null 2>&1; then
        echo "  install them with: sudo apt-get install ${apt_missing[*]}"
      else
        echo "  (Debian names; on Fedora: cmake clang clang-devel curl bubblewrap firejail msitools;"
        echo "   on Arch: cmake clang curl bubblewrap firejail msitools)"
      fi
    } >&2
    exit 1
  fi
fi

for tool in ${cargo_missing[@]+"${cargo_missing[@]}"}; do
  echo "prereqs: installing $tool (cargo install --locked)"
  cargo install --locked --quiet "$tool"
done

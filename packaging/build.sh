#!/usr/bin/env bash
# Builds an installer into target/dist/ (ONDEVICE_DIST_DIR overrides):
#   packaging/build.sh deb     .deb with cargo-deb            (Linux)
#   packaging/build.sh rpm     .rpm with cargo-generate-rpm   (Linux)
#   packaging/build.sh msi     .msi with wixl (msitools)       (Linux; on Windows use cargo-wix, see ondevice.wxs)
#   packaging/build.sh pkg     .pkg + .dmg                     (macOS only: packaging/macos/build-pkg.sh)
#   packaging/build.sh stage   only the staging directory below
#
# Which binary is packaged:
#   ONDEVICE_BIN=PATH          that file (e.g. a binary built by the release workflow)
#   ONDEVICE_REUSE_BUILD=1     the existing $CARGO_TARGET_DIR/release/ondevice (CI: the test build), stripped here
#   otherwise                  `cargo build --profile dist --locked -p ondevice` (LTO, stripped)
# Engine worker builds for other x86-64 levels (deb, rpm): ONDEVICE_WORKER_BUILDS=DIR packs
# DIR/ondevice-worker-x86-64-v* (made by packaging/build-worker.sh) into /usr/lib/ondevice/, where
# the daemon picks the best one for the CPU (crates/ondevice/src/cpu.rs). Without it the package
# has the x86-64-v3 binary only.
# msi: the Windows binary comes from ONDEVICE_WINDOWS_EXE. Without it the MSI cannot be real; with
# ONDEVICE_MSI_STRUCTURAL_TEST=1 the Linux binary is packed under the name ondevice.exe only to test
# the WiX source and the MSI tables, written to target/packaging/msi-test/, never to target/dist/.
#
# Every package gets the man pages and shell completions that the packaged binary itself
# generates (`ondevice generate-assets`), and packaging/common/config.toml, checked with
# `ondevice config check` first. Staging: packaging/.stage/ (git-ignored; the paths are fixed in
# crates/ondevice/Cargo.toml; removed at exit unless the command is `stage` or ONDEVICE_KEEP_STAGE=1).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
kind=${1:-}
case "$kind" in
  deb | rpm | msi | pkg | stage) ;;
  *)
    echo "usage: packaging/build.sh deb|rpm|msi|pkg|stage" >&2
    exit 2
    ;;
esac

target_dir=${CARGO_TARGET_DIR:-$root/target}
dist=${ONDEVICE_DIST_DIR:-$root/target/dist}
stage=$root/packaging/.stage
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || { echo "error: cannot read the workspace version from Cargo.toml" >&2; exit 1; }
say() { echo "build.sh $kind: $*"; }

if [ "$kind" = pkg ]; then
  if [ "$(uname -s)" != Darwin ]; then
    echo "error: .pkg/.dmg need macOS (pkgbuild, productbuild, hdiutil): run packaging/macos/build-pkg.sh there" >&2
    exit 1
  fi
  exec packaging/macos/build-pkg.sh
fi

# Build and packaging tools: installed when root on Debian/Ubuntu, otherwise named (exit 1).
case "$kind" in
  deb | rpm | msi) scripts/prereqs.sh "$kind" ;;
esac

# The binary to package.
if [ -n "${ONDEVICE_BIN:-}" ]; then
  bin=$ONDEVICE_BIN
elif [ "${ONDEVICE_REUSE_BUILD:-0}" = 1 ]; then
  bin=$target_dir/release/ondevice
  [ -x "$bin" ] || { echo "error: ONDEVICE_REUSE_BUILD=1 but $bin does not exist: run cargo build --release first" >&2; exit 1; }
else
  say "building with --profile dist (slow: fat LTO, one codegen unit)"
  cargo build --profile dist --locked -p ondevice
  bin=$target_dir/dist/ondevice
fi
[ -x "$bin" ] || { echo "error: $bin is not an executable file" >&2; exit 1; }
say "binary $bin"

# Stage: binary (stripped copy), config, README, man pages (gzipped) and completions.
rm -rf "$stage"
if [ "$kind" != stage ] && [ "${ONDEVICE_KEEP_STAGE:-0}" != 1 ]; then
  trap 'rm -rf "$stage"' EXIT
fi
mkdir -p "$stage" "$dist"
cp "$bin" "$stage/ondevice"
chmod 755 "$stage/ondevice"
if command -v strip >/dev/null && ! strip -s "$stage/ondevice" 2>/dev/null; then
  say "note: strip failed (foreign architecture?), packaging the binary as built"
fi
# Assets come from the packaged binary when it runs here, else from ONDEVICE_ASSETS_BIN (same CLI).
assets_bin=${ONDEVICE_ASSETS_BIN:-$stage/ondevice}
"$assets_bin" generate-assets --out "$stage" >/dev/null
gzip -9n "$stage"/man/*.1
mkdir -p "$stage/workers"
cp packaging/common/workers-README "$stage/workers/README"
if [ -n "${ONDEVICE_WORKER_BUILDS:-}" ]; then
  found=0
  for w in "$ONDEVICE_WORKER_BUILDS"/ondevice-worker-x86-64-v*; do
    [ -f "$w" ] || continue
    cp "$w" "$stage/workers/"
    chmod 755 "$stage/workers/$(basename "$w")"
    command -v strip >/dev/null && strip -s "$stage/workers/$(basename "$w")" 2>/dev/null || true
    found=$((found + 1))
  done
  [ "$found" -gt 0 ] || { echo "error: no ondevice-worker-x86-64-v* in ONDEVICE_WORKER_BUILDS=$ONDEVICE_WORKER_BUILDS" >&2; exit 1; }
  say "worker builds: $(cd "$stage/workers" && echo ondevice-worker-*)"
fi
cp packaging/common/config.toml "$stage/config.toml"
"$assets_bin" config check "$stage/config.toml" >/dev/null
cp README.md "$stage/README.md"
say "staged $(find "$stage" -type f | wc -l) files in $stage"

case "$kind" in
  stage) ;;
  deb)
    # --no-build: the binary is the staged one; cargo-deb only assembles the package.
    cargo deb --no-build --locked -p ondevice --output "$dist/"
    ls -1 "$dist"/ondevice_"$version"-*.deb
    ;;
  rpm)
    cargo generate-rpm -p crates/ondevice --output "$dist/"
    ls -1 "$dist"/ondevice-"$version"-*.rpm
    ;;
  msi)
    msi_version=${version%%[-+]*} # MSI versions are numeric: 1.2.3
    bindir=$root/target/packaging/msi-bin
    rm -rf "$bindir"
    mkdir -p "$bindir"
    if [ -n "${ONDEVICE_WINDOWS_EXE:-}" ]; then
      cp "$ONDEVICE_WINDOWS_EXE" "$bindir/ondevice.exe"
      out=$dist/ondevice-$version-x86_64.msi
    elif [ "${ONDEVICE_MSI_STRUCTURAL_TEST:-0}" = 1 ]; then
      say "STRUCTURAL TEST: packing the Linux binary as ondevice.exe; the result does not run on Windows"
      cp "$stage/ondevice" "$bindir/ondevice.exe"
      mkdir -p "$root/target/packaging/msi-test"
      out=$root/target/packaging/msi-test/ondevice-$version-x86_64-STRUCTURAL-TEST-NOT-FOR-RELEASE.msi
    else
      echo "error: set ONDEVICE_WINDOWS_EXE to a Windows build of ondevice.exe (cannot be built on Linux)," >&2
      echo "       or ONDEVICE_MSI_STRUCTURAL_TEST=1 to test the WiX source with a stand-in binary" >&2
      exit 1
    fi
    # wixl takes source paths relative to the working directory (absolute ones fail).
    wixl --arch x64 -D Toolset=wixl -D Version="$msi_version" -D CargoTargetBinDir="${bindir#"$root"/}" \
      -D StageDir="${stage#"$root"/}" -o "$out" packaging/windows/ondevice.wxs
    ls -1 "$out"
    ;;
esac

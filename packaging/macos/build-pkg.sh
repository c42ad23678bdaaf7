#!/usr/bin/env bash
# macOS installer: target/dist/ondevice-VERSION-ARCH.pkg (pkgbuild + productbuild) and a DMG
# holding the .pkg, uninstall.sh and the README. Runs on macOS only (pkgbuild, productbuild,
# hdiutil); packaging/build.sh pkg calls it. Binary: ONDEVICE_BIN, else the --release build when
# ONDEVICE_REUSE_BUILD=1, else `cargo build --profile dist`. Signing, when the identities are in the
# keychain: ONDEVICE_PKG_SIGN_IDENTITY="Developer ID Installer: ..." (notarize the .pkg afterwards
# with `xcrun notarytool submit --wait` and `xcrun stapler staple`).
#
# Installs: /usr/local/bin/ondevice, /Library/LaunchAgents/com.ondevice.daemon.plist (per-user
# agent), man pages in /usr/local/share/man/man1, completions (zsh, bash, fish) under /usr/local,
# /usr/local/share/ondevice/{uninstall.sh,config.example.toml,README.md}.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
[ "$(uname -s)" = Darwin ] || { echo "error: build-pkg.sh needs macOS (pkgbuild, productbuild, hdiutil)" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(uname -m) # arm64 or x86_64
target_dir=${CARGO_TARGET_DIR:-$root/target}
dist=${ONDEVICE_DIST_DIR:-$root/target/dist}
if [ -n "${ONDEVICE_BIN:-}" ]; then
  bin=$ONDEVICE_BIN
elif [ "${ONDEVICE_REUSE_BUILD:-0}" = 1 ]; then
  bin=$target_dir/release/ondevice
else
  cargo build --profile dist --locked -p ondevice
  bin=$target_dir/dist/ondevice
fi
[ -x "$bin" ] || { echo "error: $bin is not an executable file" >&2; exit 1; }
case "$(lipo -archs "$bin" 2>/dev/null || echo "$arch")" in
  *"$arch"*) ;;
  *) echo "error: $bin is not built for $arch" >&2; exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkgroot=$work/root
install -d "$pkgroot/usr/local/bin" "$pkgroot/Library/LaunchAgents" "$pkgroot/usr/local/share/man/man1" \
  "$pkgroot/usr/local/share/zsh/site-functions" "$pkgroot/usr/local/etc/bash_completion.d" \
  "$pkgroot/usr/local/share/fish/vendor_completions.d" "$pkgroot/usr/local/share/ondevice"
install -m 755 "$bin" "$pkgroot/usr/local/bin/ondevice"
strip -x "$pkgroot/usr/local/bin/ondevice" 2>/dev/null || true
"$pkgroot/usr/local/bin/ondevice" generate-assets --out "$work/assets" >/dev/null
install -m 644 "$work"/assets/man/*.1 "$pkgroot/usr/local/share/man/man1/"
install -m 644 "$work/assets/completions/_ondevice" "$pkgroot/usr/local/share/zsh/site-functions/_ondevice"
install -m 644 "$work/assets/completions/ondevice.bash" "$pkgroot/usr/local/etc/bash_completion.d/ondevice"
install -m 644 "$work/assets/completions/ondevice.fish" "$pkgroot/usr/local/share/fish/vendor_completions.d/ondevice.fish"
install -m 644 packaging/macos/com.ondevice.daemon.plist "$pkgroot/Library/LaunchAgents/"
plutil -lint "$pkgroot/Library/LaunchAgents/com.ondevice.daemon.plist"
install -m 755 packaging/macos/uninstall.sh "$pkgroot/usr/local/share/ondevice/uninstall.sh"
install -m 644 packaging/common/config.toml "$pkgroot/usr/local/share/ondevice/config.example.toml"
install -m 644 README.md "$pkgroot/usr/local/share/ondevice/README.md"
"$pkgroot/usr/local/bin/ondevice" config check "$pkgroot/usr/local/share/ondevice/config.example.toml"

# Component package: no relocation (paths are absolute), ownership root:wheel.
plist=$work/component.plist
pkgbuild --analyze --root "$pkgroot" "$plist"
/usr/libexec/PlistBuddy -c "Set :0:BundleIsRelocatable false" "$plist" 2>/dev/null || true
pkgbuild --root "$pkgroot" --component-plist "$plist" --identifier com.ondevice.pkg --version "$version" \
  --install-location / --scripts packaging/macos/scripts --ownership recommended \
  "$work/ondevice-component.pkg"

sed -e "s/@VERSION@/$version/g" -e "s/@ARCH@/$arch/g" packaging/macos/distribution.xml >"$work/distribution.xml"
mkdir -p "$dist"
pkg=$dist/ondevice-$version-$arch.pkg
sign=()
[ -n "${ONDEVICE_PKG_SIGN_IDENTITY:-}" ] && sign=(--sign "$ONDEVICE_PKG_SIGN_IDENTITY")
productbuild --distribution "$work/distribution.xml" --package-path "$work" "${sign[@]}" "$pkg"
pkgutil --check-signature "$pkg" || true # unsigned builds say so

dmgroot=$work/dmg
mkdir -p "$dmgroot"
cp "$pkg" "$dmgroot/"
cp packaging/macos/uninstall.sh README.md "$dmgroot/"
dmg=$dist/ondevice-$version-$arch.dmg
rm -f "$dmg"
hdiutil create -volname "ondevice $version" -srcfolder "$dmgroot" -fs HFS+ -format UDZO -ov "$dmg"
hdiutil verify "$dmg"
ls -l "$pkg" "$dmg"

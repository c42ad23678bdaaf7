#!/usr/bin/env bash
# Type-checks the workspace for Windows and macOS from Linux, as CI's `cargo clippy --release
# --locked --workspace --all-targets -- -D warnings` on those systems does (every cfg(windows) and
# cfg(target_os = "macos") path, tests and examples included). The C/C++ dependencies (ring,
# SQLite, llama.cpp) cannot be built without those systems' SDKs, so their build scripts are
# replaced by cargo `links` overrides and their Rust bindings come from SQLite's bundled copy and
# from the Linux build: this checks our Rust code, not compiling C or linking.
# Needs rustup (the targets are added here) and one Linux build first (`cargo build --release`).
# Usage: scripts/cross-check.sh [TARGET...]   (default: x86_64-pc-windows-msvc aarch64-apple-darwin)
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(x86_64-pc-windows-msvc aarch64-apple-darwin)
lock_version() { sed -n "/^name = \"$1\"$/{n;s/^version = \"\(.*\)\"$/\1/p;}" Cargo.lock | head -n 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/sqlite" "$work/llama"
sqlite_src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/libsqlite3-sys-"$(lock_version libsqlite3-sys)" | head -n 1)"
cp "$sqlite_src/sqlite3/bindgen_bundled_version.rs" "$work/sqlite/bindgen.rs"
llama="$(ls -t target/release/build/llama-cpp-sys-2-*/out/bindings.rs 2>/dev/null | head -n 1 || true)"
[ -n "$llama" ] || { echo "build for Linux first (cargo build --release): llama.cpp's bindings are reused" >&2; exit 1; }
cp "$llama" "$work/llama/bindings.rs"
ring="ring_core_$(lock_version ring | tr . _)_"
for t in "${targets[@]}"; do
  rustup target add "$t" >/dev/null
  cat >>"$work/config.toml" <<EOF
[target.$t.sqlite3]
rustc-env = { OUT_DIR = "$work/sqlite" }
[target.$t.llama]
rustc-env = { OUT_DIR = "$work/llama" }
[target.$t.$ring]
rustc-cfg = []
EOF
done
for t in "${targets[@]}"; do
  echo "== cargo clippy --target $t"
  cargo clippy --release --locked --workspace --all-targets --target "$t" --config "$work/config.toml" -- -D warnings
done

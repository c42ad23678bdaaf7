#!/usr/bin/env bash
# Builds the engine worker for another x86-64 level, for packages to carry beside the x86-64-v3
# binary (the daemon picks the best build for the CPU; see crates/ondevice/src/cpu.rs):
#   packaging/build-worker.sh v2    SSE4.2 only: CPUs without AVX2
#   packaging/build-worker.sh v4    AVX-512 (F, BW, CD, DQ, VL)
# Writes target/worker-builds/ondevice-worker-x86-64-vN (pass that directory to packaging/build.sh
# as ONDEVICE_WORKER_BUILDS). Each level compiles llama.cpp again in its own target directory
# (target/worker-builds/vN/), with the GGML_* options of that level overriding .cargo/config.toml.
# PROFILE=release for a quicker build than the default dist profile.
set -euo pipefail
cd "$(dirname "$0")/.."
level=${1:-}
profile=${PROFILE:-dist}
out=${CARGO_TARGET_DIR:-$PWD/target}/worker-builds
case "$level" in
  v2) flags=(GGML_SSE42=ON GGML_AVX=OFF GGML_AVX2=OFF GGML_FMA=OFF GGML_F16C=OFF GGML_BMI2=OFF GGML_AVX512=OFF) ;;
  v4) flags=(GGML_SSE42=ON GGML_AVX=ON GGML_AVX2=ON GGML_FMA=ON GGML_F16C=ON GGML_BMI2=ON GGML_AVX512=ON) ;;
  *)
    echo "usage: packaging/build-worker.sh v2|v4   (v3 is ondevice itself)" >&2
    exit 2
    ;;
esac
[ "$(uname -m)" = x86_64 ] || { echo "error: worker builds per x86-64 level are for x86_64 hosts" >&2; exit 1; }
mkdir -p "$out"
env "${flags[@]}" CARGO_TARGET_DIR="$out/$level" cargo build --profile "$profile" --locked -p ondevice
built=$out/$level/$profile/ondevice
# The build must be what its name claims: build.rs records the level from GGML_* and
# `ondevice --version` shows it (read from the file, not run: the host may lack the level).
grep -qa "(llama.cpp kernels: x86-64-$level)" "$built" || {
  echo "error: $built does not say 'llama.cpp kernels: x86-64-$level' in its version" >&2
  exit 1
}
cp "$built" "$out/ondevice-worker-x86-64-$level"
echo "$out/ondevice-worker-x86-64-$level"

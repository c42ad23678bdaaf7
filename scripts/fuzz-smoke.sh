#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer coverage instrumentation (stable Rust: no sanitizer,
# overflow checks and debug assertions on) and runs each for a short time.
# Usage: scripts/fuzz-smoke.sh [SECONDS_PER_TARGET]   (default 15; 0 = build only)
# With nightly and cargo-fuzz installed, `cargo fuzz run TARGET` gives the full ASan setup.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-15}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --locked --target "$triple" --target-dir target/cov
targets=$(sed -n 's/^name = "\(.*\)"/\1/p' Cargo.toml | grep -v '^ondevice-fuzz$')
[ "$secs" = 0 ] && { echo "fuzz targets built: $(echo $targets)"; exit 0; }
# One target per core at a time (each still gets SECONDS of its own): the smoke run takes
# targets/cores x SECONDS instead of targets x SECONDS.
jobs=${ONDEVICE_FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
fuzz_one() { # fuzz_one TARGET: runs it, prints a summary (or the failure) when done
  local t=$1 corpus="target/corpus/$1" log="target/fuzz-$1.log" seeds=()
  mkdir -p "$corpus"
  [ -d "seeds/$t" ] && seeds=("seeds/$t")  # committed valid inputs to start from (read-only)
  if ! "target/cov/$triple/release/$t" -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -artifact_prefix="target/artifacts-$t-" -print_final_stats=1 "$corpus" "${seeds[@]}" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $t found a failure: input saved as fuzz/target/artifacts-$t-*" >&2
    return 1
  fi
  echo "== fuzz $t for ${secs}s: $(grep -E '^(Done|stat::number_of_executed_units)' "$log" | tr '\n' ' ')"
}
failed=0
running=0
for t in $targets; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
  fuzz_one "$t" &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
exit "$failed"

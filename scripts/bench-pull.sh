#!/usr/bin/env bash
# Pull throughput on loopback: serves a 1 GiB file (default; BENCH_SIZE_MIB to change) from the
# range server in crates/ondevice-registry/examples/range_server.rs, times `curl -o` writing it to
# disk, then `ondevice models pull URL` (ranged connections, streaming SHA-256 verification,
# persisted chunk bookkeeping, blob fsynced before it is adopted) into a fresh home, and prints
# the ratio curl_time / pull_time (>= 0.9 is the target). Runs BENCH_ROUNDS rounds (default 5),
# curl and pull alternating, each after a `sync` so no run pays for the previous one's dirty
# pages and once the CPUs are idle (other processes under 10% busy), and reports medians. The
# load average is printed: run it on an idle machine.
# Uses the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${BENCH_SIZE_MIB:-1024}"
rounds="${BENCH_ROUNDS:-5}"
cargo build --release -q -p ondevice -p ondevice-registry --example range_server
target="${CARGO_TARGET_DIR:-target}/release"
work="$(mktemp -d)"
cleanup() { [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null; [ -n "${daemon_pid:-}" ] && kill "$daemon_pid" 2>/dev/null; [ -n "${BENCH_KEEP:-}" ] && cp "$work/serve.err" /tmp/bench-serve.err; rm -rf "$work"; }
trap cleanup EXIT

# A valid GGUF of the requested size: header from a tiny model, then padding in one tensor.
python3 - "$work/bench.gguf" "$size_mib" <<'PY'
import struct, sys
path, mib = sys.argv[1], int(sys.argv[2])
n = mib * 1024 * 1024 // 4
def s(x): b = x.encode(); return struct.pack('<Q', len(b)) + b
kv = s('general.architecture') + struct.pack('<I', 8) + s('llama')
hdr = b'GGUF' + struct.pack('<IQQ', 3, 1, 1) + kv
ti = s('w') + struct.pack('<I', 1) + struct.pack('<Q', n) + struct.pack('<I', 0) + struct.pack('<Q', 0)
head = hdr + ti
head += b'\0' * ((-len(head)) % 32)
with open(path, 'wb') as f:
    f.write(head)
    chunk = bytes(range(256)) * 4096
    left = n * 4
    while left:
        k = min(left, len(chunk)); f.write(chunk[:k]); left -= k
PY
bytes=$(stat -c %s "$work/bench.gguf")

"$target/examples/range_server" "$work/bench.gguf" > "$work/server.out" &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/server.out" ] && break; sleep 0.05; done
url="$(head -1 "$work/server.out")"

export ONDEVICE_HOME="$work/home" ONDEVICE_CONFIG="$work/config.toml" ONDEVICE_LISTEN=127.0.0.1:0
printf '[registry]\nallow_hosts = ["127.0.0.1"]\nmin_free = "0B"\n%s\n[log]\nfile = false\n' "${BENCH_REGISTRY:-}" > "$ONDEVICE_CONFIG"
"$target/ondevice" serve > "$work/serve.out" 2> "$work/serve.err" &
daemon_pid=$!
for _ in $(seq 200); do grep -q "bootstrap token" "$work/serve.out" 2>/dev/null && break; sleep 0.05; done

# Warm the page cache so every run reads the source from memory.
cat "$work/bench.gguf" > /dev/null
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

now() { date +%s.%N; }
# Busy share of all CPUs over one second, in percent (from /proc/stat).
busy() {
  read -r _ a b c d e f g _ < /proc/stat; sleep 1; read -r _ a2 b2 c2 d2 e2 f2 g2 _ < /proc/stat
  local total=$(( (a2+b2+c2+d2+e2+f2+g2) - (a+b+c+d+e+f+g) )) idle=$(( (d2+e2) - (d+e) ))
  echo $(( 100 * (total - idle) / (total > 0 ? total : 1) ))
}
# On a shared machine, wait (up to BENCH_IDLE_WAIT seconds, default 300) until the other
# processes leave the CPUs under 10% busy, so each run measures this program, not a neighbour.
noisy=0
wait_idle() {
  local deadline=$(( $(date +%s) + ${BENCH_IDLE_WAIT:-300} ))
  while [ "$(busy)" -ge 10 ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then noisy=$((noisy + 1)); return; fi
  done
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
curl_times=() curl_sync_times=() pull_times=()
for i in $(seq "$rounds"); do
  sync; wait_idle
  t0=$(now); curl -sS -o "$work/curl.out" "$url"; t1=$(now)
  curl_times+=("$(echo "$t1 - $t0" | bc -l)")
  rm -f "$work/curl.out"; sync; wait_idle
  # The pull makes its blob durable (fsync before the rename); curl does not. Also time curl + sync.
  t0=$(now); curl -sS -o "$work/curl.out" "$url" && sync "$work/curl.out"; t1=$(now)
  curl_sync_times+=("$(echo "$t1 - $t0" | bc -l)")
  rm -f "$work/curl.out"; sync; wait_idle
  t0=$(now); "$target/ondevice" models pull "$url" --name "bench:$i" > /dev/null 2> "$work/pull.err"; t1=$(now)
  pull_times+=("$(echo "$t1 - $t0" | bc -l)")
  "$target/ondevice" models rm "bench:$i" > /dev/null 2>&1 || true
  "$target/ondevice" models gc > /dev/null 2>&1 || true
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
curl_s=$(printf '%s\n' "${curl_times[@]}" | median)
curl_sync_s=$(printf '%s\n' "${curl_sync_times[@]}" | median)
pull_s=$(printf '%s\n' "${pull_times[@]}" | median)

mib=$(echo "$bytes / 1048576" | bc -l)
printf 'file:         %.0f MiB on loopback (%s), %s rounds, medians\n' "$mib" "$url" "$rounds"
printf 'load average: %s before, %s after (%s cores); runs started on a busy machine: %s\n' \
  "$load_before" "$load_after" "$(nproc)" "$noisy"
printf 'curl -o:      %.2f s  (%.0f MiB/s)   runs: %s\n' "$curl_s" "$(echo "$mib / $curl_s" | bc -l)" "${curl_times[*]}"
printf 'curl -o+sync: %.2f s                runs: %s\n' "$curl_sync_s" "${curl_sync_times[*]}"
printf 'models pull:  %.2f s  (%.0f MiB/s, sha256 verified, fsynced, %s)   runs: %s\n' "$pull_s" \
  "$(echo "$mib / $pull_s" | bc -l)" "${BENCH_REGISTRY:-default connections and chunk size}" "${pull_times[*]}"
printf 'ratio (curl time / pull time): %.2fx (target >= 0.9x)\n' "$(echo "$curl_s / $pull_s" | bc -l)"
printf 'ratio (curl+sync time / pull time): %.2fx\n' "$(echo "$curl_sync_s / $pull_s" | bc -l)"

#!/usr/bin/env bash
# Pull throughput on loopback: serves a 1 GiB file (default; BENCH_SIZE_MIB to change) from the
# range server in crates/ondevice-registry/examples/range_server.rs, times `curl -o` writing it to
# disk, then `ondevice models pull URL` (ranged connections, streaming SHA-256 verification,
# persisted chunk bookkeeping) into a fresh home, and prints the ratio curl_time / pull_time
# (>= 0.9 is the target). Uses the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${BENCH_SIZE_MIB:-1024}"
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

# Warm the page cache so both runs read the source from memory.
cat "$work/bench.gguf" > /dev/null

t0=$(date +%s.%N)
curl -sS -o "$work/curl.out" "$url"
t1=$(date +%s.%N)
curl_s=$(echo "$t1 - $t0" | bc -l)
rm -f "$work/curl.out"
# The pull makes its blob durable (fsync before the rename); curl does not. Also time curl + sync.
t0=$(date +%s.%N)
curl -sS -o "$work/curl.out" "$url" && sync "$work/curl.out"
t1=$(date +%s.%N)
curl_sync_s=$(echo "$t1 - $t0" | bc -l)
rm -f "$work/curl.out"

export ONDEVICE_HOME="$work/home" ONDEVICE_CONFIG="$work/config.toml" ONDEVICE_LISTEN=127.0.0.1:0
printf '[registry]\nallow_hosts = ["127.0.0.1"]\nmin_free = "0B"\n[log]\nfile = false\n' > "$ONDEVICE_CONFIG"
"$target/ondevice" serve > "$work/serve.out" 2> "$work/serve.err" &
daemon_pid=$!
for _ in $(seq 200); do grep -q "bootstrap token" "$work/serve.out" 2>/dev/null && break; sleep 0.05; done

t0=$(date +%s.%N)
"$target/ondevice" models pull "$url" --name bench:1 > /dev/null 2> "$work/pull.err"
t1=$(date +%s.%N)
pull_s=$(echo "$t1 - $t0" | bc -l)

mib=$(echo "$bytes / 1048576" | bc -l)
printf 'file:        %.0f MiB on loopback (%s)\n' "$mib" "$url"
printf 'curl -o:     %.2f s  (%.0f MiB/s)\n' "$curl_s" "$(echo "$mib / $curl_s" | bc -l)"
printf 'models pull: %.2f s  (%.0f MiB/s, sha256 verified, %s)\n' "$pull_s" "$(echo "$mib / $pull_s" | bc -l)" \
  "$(grep -o 'connections = [0-9]*' "$ONDEVICE_CONFIG" || echo 'default connections')"
printf 'curl -o+sync: %.2f s\n' "$curl_sync_s"
printf 'ratio (curl time / pull time): %.2fx (target >= 0.9x)\n' "$(echo "$curl_s / $pull_s" | bc -l)"
printf 'ratio (curl+sync time / pull time): %.2fx\n' "$(echo "$curl_sync_s / $pull_s" | bc -l)"

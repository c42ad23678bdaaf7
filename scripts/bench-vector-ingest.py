#!/usr/bin/env python3
"""Embedding ingest and generation stalls, ondevice against llama.cpp's server (PyPI `xllamacpp`).

1. Ingest: all-MiniLM-L6-v2's safetensors converted to GGUF (F32) by `ondevice quantize`; the
   same GGUF served by llama.cpp's server (`/v1/embeddings`, mean pooling) and imported into an
   ondevice daemon. The same synthetic corpus (DOCS documents of ~WORDS words drawn from a fixed
   vocabulary, seeded; one chunk each under the default 256-token chunks) goes
     - to ondevice end to end: `POST /api/v1/collections/bench/documents` in batches of 32
       (chunking, tokenizing, embedding, storing in SQLite + HNSW), and
     - to llama.cpp's server: `POST /v1/embeddings` in batches of 32 (embedding only).
   Both with 2 engine threads. Prints chunks/s of each and the ratio ondevice / llama.cpp.
   Each round uses fresh texts (ondevice caches embeddings by text), rounds alternate.
2. Stalls: an ondevice daemon with SmolLM2 streams a chat answer (max inter-token gap, median gap)
   alone, then while another client embeds large batches with the same model (the same engine
   worker). Prints both gaps.

`--compare BINARY` times another ondevice build (say, one from before a change) in the same
rounds, its own daemon, so a before/after ratio is measured under the same load.

Not a test: it asserts nothing. Usage:
  scripts/bench-vector-ingest.py [--docs 256] [--words 120] [--rounds 2] [--compare BINARY]
                                 [--skip-ingest] [--skip-stalls] [--skip-two-workers]
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("ONDEVICE_TEST_MODELS_DIR", os.path.join(REPO, ".cache/models"))

VOCAB = (
    "the a of to and in is for on with as by at from that this it be are was river mountain city "
    "system model vector index query search document chunk embedding token memory process thread "
    "library function return value error request response server client network storage database "
    "otter bread volcano lava ocean forest garden winter summer morning evening quickly slowly "
    "carefully builds reads writes sends finds keeps moves opens closes grows learns teaches"
).split()


def corpus(n, words, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sentences = []
        left = words
        while left > 0:
            k = min(left, rng.randint(6, 16))
            s = " ".join(rng.choice(VOCAB) for _ in range(k))
            sentences.append(s[0].upper() + s[1:] + ".")
            left -= k
        out.append(" ".join(sentences))
    return out


def post(base, path, body, key=None, timeout=600):
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": "Bearer " + key} if key else {})},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def start_daemon(binary, threads, procs, config=""):
    home = tempfile.mkdtemp(prefix="ondevice-bench-")
    env = dict(os.environ, ONDEVICE_HOME=home, ONDEVICE_LISTEN="127.0.0.1:0",
               ONDEVICE_ENGINE_THREADS=str(threads),
               ONDEVICE_LOG=os.environ.get("ONDEVICE_BENCH_LOG", "warn"))
    env.pop("ONDEVICE_API_KEY", None)
    cfg = os.path.join(home, "config.toml")
    with open(cfg, "w") as f:
        f.write(config)
    env["ONDEVICE_CONFIG"] = cfg
    procs.append(subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    addr = os.path.join(home, "listen.addr")
    for _ in range(600):
        if os.path.exists(addr) and open(addr).read().strip():
            break
        time.sleep(0.05)
    base = "http://" + open(addr).read().strip()
    key = open(os.path.join(home, "bootstrap.token")).read().strip()
    return base, key, env


def start_peer(model, threads, procs, embedding):
    args = [sys.executable, os.path.join(REPO, "scripts/llama_server.py"), model, "--threads", str(threads),
            "--ctx", "512" if embedding else "2048", "--parallel", "1"]
    if embedding:
        args.append("--embedding")
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(p)
    line = p.stdout.readline()
    if not line.startswith("ADDR"):
        raise RuntimeError("llama.cpp server did not start")
    return line.split()[1]


def ingest(args, procs):
    minilm = os.path.join(MODELS, "all-MiniLM-L6-v2")
    out = tempfile.mkdtemp(prefix="ondevice-bench-minilm-")
    gguf = os.path.join(out, "minilm-f32.gguf")
    subprocess.run([args.binary, "quantize", minilm, "--type", "F32", "--output", gguf], check=True,
                   stdout=subprocess.DEVNULL)
    peer = start_peer(gguf, 2, procs, embedding=True)
    # ondevice, and with --compare another build of it (say, before a change), each its own daemon.
    daemons = []
    for label, binary in [("ondevice", args.binary)] + ([("compare", args.compare)] if args.compare else []):
        base, key, env = start_daemon(binary, 2, procs)
        subprocess.run([binary, "models", "import", gguf, "--name", "minilm"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        post(base, "/api/v1/collections", {"name": "bench", "model": "minilm"}, key)
        daemons.append((label, base, key))
    # Warm-up: loads the model in each.
    for _, base, key in daemons:
        post(base, "/api/v1/collections/bench/documents", {"documents": [{"id": "w", "text": "warm up"}]}, key)
    post(peer, "/v1/embeddings", {"model": "any", "input": ["warm up"]})
    rates = {label: [] for label, _, _ in daemons}
    theirs = []
    for r in range(args.rounds):
        line = []
        for n, (label, base, key) in enumerate(daemons):
            texts = corpus(args.docs, args.words, seed=1000 + 10 * r + n)
            t = time.perf_counter()
            chunks = 0
            for i in range(0, len(texts), 32):
                docs = [{"id": f"r{r}-{i + j}", "text": x} for j, x in enumerate(texts[i:i + 32])]
                chunks += post(base, "/api/v1/collections/bench/documents", {"documents": docs}, key)["chunks"]
            rates[label].append(chunks / (time.perf_counter() - t))
            line.append(f"{label} {rates[label][-1]:.1f} chunks/s end to end ({chunks} chunks)")
        texts = corpus(args.docs, args.words, seed=2000 + r)
        t = time.perf_counter()
        for i in range(0, len(texts), 32):
            got = post(peer, "/v1/embeddings", {"model": "any", "input": texts[i:i + 32]})
            assert len(got["data"]) == len(texts[i:i + 32])
        theirs.append(len(texts) / (time.perf_counter() - t))
        print(f"round {r + 1}: " + ", ".join(line) + f", llama.cpp server {theirs[-1]:.1f} texts/s embedding only",
              flush=True)
    p = statistics.median(theirs)
    print(f"ingest, all-MiniLM-L6-v2 F32, {args.docs} docs x ~{args.words} words, batches of 32, 2 threads "
          f"(load average {os.getloadavg()[0]:.2f}):")
    print(f"  llama.cpp server {p:.1f} texts/s (embeddings only)")
    for label, _, _ in daemons:
        o = statistics.median(rates[label])
        name = "ondevice" if label == "ondevice" else f"compare ({args.compare})"
        print(f"  {name} {o:.1f} chunks/s (end to end): ratio to llama.cpp {o / p:.3f}x (goal >= 1.0x)")


def stream_gaps(base, key, model, tokens):
    body = {"model": model, "stream": True, "temperature": 0, "max_tokens": tokens,
            "messages": [{"role": "user", "content": "Write a long story about a river and a city."}]}
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer " + key})
    stamps = []
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                obj = json.loads(line[5:])
                if any((c.get("delta") or {}).get("content") for c in obj.get("choices", [])):
                    stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return max(gaps), statistics.median(gaps), len(stamps)


def stalls(args, procs):
    smol = os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf")
    base, key, env = start_daemon(args.binary, 2, procs, "[engine]\nparallel = 2\n")
    print(f"stalls daemon home: {env['ONDEVICE_HOME']}")
    subprocess.run([args.binary, "models", "import", smol, "--name", "smol"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    stream_gaps(base, key, "smol", 8)  # loads the model
    quiet = stream_gaps(base, key, "smol", args.tokens)
    big = corpus(32, 300, seed=7)  # 32 inputs of ~400 tokens each per request
    stop = threading.Event()
    embedded = [0]
    failed = []

    def embed_loop():
        while not stop.is_set():
            try:
                post(base, "/v1/embeddings", {"model": "smol", "input": big}, key)
                embedded[0] += len(big)
            except urllib.error.HTTPError as e:
                failed.append(e.code)
                time.sleep(0.5)  # a refused request is not retried in a tight loop

    t = threading.Thread(target=embed_loop, daemon=True)
    t.start()
    time.sleep(1.0)  # the first batch is running
    busy = stream_gaps(base, key, "smol", args.tokens)
    stop.set()
    t.join(timeout=600)
    print(f"stalls, SmolLM2-135M Q4_1, one worker (parallel = 2), {args.tokens}-token stream:")
    print(f"  alone:                       max gap {quiet[0] * 1000:7.1f} ms, median {quiet[1] * 1000:6.1f} ms")
    print(f"  while embedding 32x~400 tok: max gap {busy[0] * 1000:7.1f} ms, median {busy[1] * 1000:6.1f} ms "
          f"({embedded[0]} texts embedded meanwhile" + (f", embedding requests failed: {failed}" if failed else "") + ")")


def two_workers(args, procs):
    """A SmolLM2 chat streams while MiniLM embeds in its own worker: two engine workers, each
    with 2 threads, on the same cores."""
    smol = os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf")
    minilm = os.path.join(MODELS, "all-MiniLM-L6-v2")
    out = tempfile.mkdtemp(prefix="ondevice-bench-minilm-")
    gguf = os.path.join(out, "minilm-f32.gguf")
    subprocess.run([args.binary, "quantize", minilm, "--type", "F32", "--output", gguf], check=True,
                   stdout=subprocess.DEVNULL)
    base, key, env = start_daemon(args.binary, 2, procs, "[engine]\nparallel = 2\n")
    print(f"two-workers daemon home: {env['ONDEVICE_HOME']}")
    for path, name in ((smol, "smol"), (gguf, "minilm")):
        subprocess.run([args.binary, "models", "import", path, "--name", name], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    stream_gaps(base, key, "smol", 8)  # loads the model
    texts = corpus(32, args.words, seed=11)
    post(base, "/v1/embeddings", {"model": "minilm", "input": texts[:2]}, key)  # loads MiniLM
    quiet = stream_gaps(base, key, "smol", args.tokens)
    # MiniLM alone: texts/s (fresh texts each request: the daemon caches nothing for /v1/embeddings,
    # but keep them distinct anyway).
    t = time.perf_counter()
    n = 0
    for r in range(4):
        n += len(post(base, "/v1/embeddings", {"model": "minilm", "input": corpus(32, args.words, seed=100 + r)},
                      key)["data"])
    alone_rate = n / (time.perf_counter() - t)
    stop = threading.Event()
    embedded = [0]
    failed = []

    def embed_loop():
        r = 0
        while not stop.is_set():
            try:
                post(base, "/v1/embeddings", {"model": "minilm", "input": corpus(32, args.words, seed=200 + r)}, key)
                embedded[0] += 32
            except urllib.error.HTTPError as e:
                failed.append(e.code)
                time.sleep(0.5)
            r += 1

    th = threading.Thread(target=embed_loop, daemon=True)
    t = time.perf_counter()
    th.start()
    time.sleep(1.0)
    busy = stream_gaps(base, key, "smol", args.tokens)
    stop.set()
    th.join(timeout=600)
    busy_rate = embedded[0] / (time.perf_counter() - t)
    print(f"two workers, SmolLM2 chat ({args.tokens} tokens) while MiniLM embeds 32 x ~{args.words} words per request:")
    print(f"  chat alone:            max gap {quiet[0] * 1000:7.1f} ms, median {quiet[1] * 1000:6.1f} ms")
    print(f"  chat while embedding:  max gap {busy[0] * 1000:7.1f} ms, median {busy[1] * 1000:6.1f} ms"
          + (f" (embedding requests failed: {failed})" if failed else ""))
    print(f"  MiniLM texts/s: alone {alone_rate:.1f}, during the chat and after it {busy_rate:.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--words", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-stalls", action="store_true")
    ap.add_argument("--skip-two-workers", action="store_true")
    ap.add_argument("--binary", default=os.path.join(REPO, "target/release/ondevice"))
    ap.add_argument("--compare", metavar="BINARY",
                    help="ingest: also time this ondevice build (its own daemon), interleaved in the same rounds")
    args = ap.parse_args()
    procs = []
    try:
        if not args.skip_ingest:
            ingest(args, procs)
        for p in procs:
            if p.stdin:
                p.stdin.close()
            else:
                p.terminate()
            p.wait(timeout=30)
        procs.clear()
        if not args.skip_stalls:
            stalls(args, procs)
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
        procs.clear()
        if not args.skip_two_workers:
            two_workers(args, procs)
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
            else:
                p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Perplexity of a GGUF on ondevice's quality text, computed by llama.cpp's own server (PyPI
`xllamacpp`), to compare with the figure `ondevice quantize` records (ondevice_quantize::quality).

Same method as ondevice (and llama-perplexity): the text is tokenized by the server with the
model's special tokens, cut into chunks of --ctx tokens whose first token is BOS (when the model
adds one), at most --chunks of them, and the second half of each chunk is scored. The server has
no prompt log-probabilities, so each scored position is one request: the chunk up to that token
as token ids, one token generated and forced (logit bias) to be the next token of the text, whose
probability the server reports from the raw logits (`n_probs`). With the prompt cache, each
request evaluates one new token, so the peer decodes one token at a time where ondevice decodes a
whole chunk at once: expect agreement to a few parts in ten thousand, not bit for bit.

Usage: scripts/quality-peer.py MODEL.gguf [--text crates/ondevice-quantize/data/quality.txt]
       [--ctx 512] [--chunks 4] [--threads N]
Prints one JSON line: {"perplexity", "tokens", "build"}.
"""

import argparse
import json
import math
import os
import urllib.request

import gguf
import xllamacpp as x

HERE = os.path.dirname(os.path.abspath(__file__))


def post(addr, path, body):
    req = urllib.request.Request(
        addr + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--text", default=os.path.join(HERE, "..", "crates", "ondevice-quantize", "data", "quality.txt"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    reader = gguf.GGUFReader(args.model)

    def field(key):
        f = reader.fields.get(key)
        return None if f is None else f.parts[f.data[0]][0]

    add_bos = bool(field("tokenizer.ggml.add_bos_token"))
    bos = field("tokenizer.ggml.bos_token_id")

    p = x.CommonParams()
    p.model.path = args.model
    p.port = 0
    p.n_ctx = args.ctx + 8
    p.n_parallel = 1
    if args.threads > 0:
        p.cpuparams.n_threads = args.threads
        p.cpuparams_batch.n_threads = args.threads
    server = x.Server(p)
    addr = server.listening_address
    if not addr.startswith("http"):
        addr = "http://" + addr

    text = open(args.text, encoding="utf-8").read()
    tokens = post(addr, "/tokenize", {"content": text, "add_special": True})["tokens"]
    n = args.ctx
    chunks = min(len(tokens) // n, args.chunks)
    nll, scored = 0.0, 0
    for c in range(chunks):
        chunk = tokens[c * n : (c + 1) * n]
        if add_bos and bos is not None:
            chunk[0] = int(bos)
        for j in range(n // 2, n - 1):
            target = chunk[j + 1]
            out = post(
                addr,
                "/completion",
                {
                    "prompt": chunk[: j + 1],
                    "n_predict": 1,
                    "n_probs": 1,
                    "temperature": 0.0,
                    "logit_bias": [[target, 1000.0]],
                    "cache_prompt": True,
                },
            )
            probs = out["completion_probabilities"][0]
            assert probs["id"] == target, (probs, target)
            nll -= probs["logprob"]
            scored += 1
    del server
    print(json.dumps({"perplexity": math.exp(nll / scored), "tokens": scored, "build": str(x.BUILD_INFO)[:200]}))


if __name__ == "__main__":
    main()

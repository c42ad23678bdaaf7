#!/usr/bin/env python3
"""llama.cpp's own server (PyPI `xllamacpp`) on 127.0.0.1 with a free port, for tests and benchmarks.

Prints `ADDR http://127.0.0.1:PORT` once it listens, then serves until its stdin closes (so it stops
with the test or benchmark that started it, even if that one dies).

Usage: llama_server.py MODEL.gguf [--threads N] [--ctx N] [--parallel N] [--embedding]
"""

import argparse
import sys

import xllamacpp as x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=0, help="0: llama.cpp's default")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--embedding", action="store_true", help="serve /v1/embeddings (mean pooling)")
    args = ap.parse_args()

    p = x.CommonParams()
    p.model.path = args.model
    p.port = 0
    p.n_ctx = args.ctx
    p.n_parallel = args.parallel
    p.use_jinja = True
    if args.threads > 0:
        p.cpuparams.n_threads = args.threads
        p.cpuparams_batch.n_threads = args.threads
    if args.embedding:
        p.embedding = True
        p.pooling_type = x.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    server = x.Server(p)
    print("ADDR", server.listening_address, flush=True)
    sys.stdin.read()
    del server


if __name__ == "__main__":
    main()

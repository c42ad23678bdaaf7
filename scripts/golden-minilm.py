#!/usr/bin/env python3
"""Reference sentence embeddings for all-MiniLM-L6-v2, computed independently of llama.cpp.

A plain NumPy forward pass of the BERT encoder over the model's own safetensors file (read by hand:
8-byte header length, JSON header, little-endian data), tokenized by the Hugging Face `tokenizers`
package from the model's tokenizer.json, mean-pooled over every token and scaled to unit length, as
sentence-transformers does for this model (modules.json: Transformer, mean Pooling, Normalize).

The output is committed as crates/ondevice-quantize/tests/golden/minilm.json; the converter's golden
test compares the embeddings of our GGUF conversion, run by the llama.cpp engine, against it.

    pip install numpy tokenizers
    python3 scripts/golden-minilm.py "$ONDEVICE_TEST_MODELS_DIR/all-MiniLM-L6-v2" \
        > crates/ondevice-quantize/tests/golden/minilm.json
"""

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A monkey is playing drums.",
]

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64}


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        if info["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(DTYPES[info["dtype"]]).newbyteorder("<"))
        tensors[name] = arr.reshape(info["shape"]).astype(np.float64)
    return tensors


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def layer_norm(x, w, b, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def embed(t, config, ids):
    eps = config["layer_norm_eps"]
    n_head = config["num_attention_heads"]
    hidden = config["hidden_size"]
    head_dim = hidden // n_head
    n = len(ids)
    x = t["embeddings.word_embeddings.weight"][ids]
    x = x + t["embeddings.position_embeddings.weight"][:n]
    x = x + t["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], eps)
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(name, v):
            return v @ t[p + name + ".weight"].T + t[p + name + ".bias"]

        q = lin("attention.self.query", x).reshape(n, n_head, head_dim).transpose(1, 0, 2)
        k = lin("attention.self.key", x).reshape(n, n_head, head_dim).transpose(1, 0, 2)
        v = lin("attention.self.value", x).reshape(n, n_head, head_dim).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs = probs / probs.sum(axis=-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(n, hidden)
        attn = lin("attention.output.dense", ctx)
        x = layer_norm(x + attn, t[p + "attention.output.LayerNorm.weight"], t[p + "attention.output.LayerNorm.bias"], eps)
        h = gelu(lin("intermediate.dense", x))
        out = lin("output.dense", h)
        x = layer_norm(x + out, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"], eps)
    pooled = x.mean(axis=0)
    return pooled / np.linalg.norm(pooled)


def main():
    model_dir = Path(sys.argv[1])
    config = json.loads((model_dir / "config.json").read_text())
    tensors = load_safetensors(model_dir / "model.safetensors")
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    out = []
    for s in SENTENCES:
        ids = tokenizer.encode(s).ids
        v = embed(tensors, config, ids)
        out.append({"text": s, "tokens": ids, "embedding": [round(float(x), 7) for x in v]})
    a, b = np.array(out[0]["embedding"]), np.array(out[1]["embedding"])
    result = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "made_by": "scripts/golden-minilm.py (numpy forward pass, mean pooling, unit length)",
        "cosine_0_1": round(float(a @ b), 6),
        "sentences": out,
    }
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Quantization speed: ondevice against llama.cpp's own quantizer and against mlx-lm.

    python3 scripts/bench-quantize.py [--ondevice target/release/ondevice]
        [--llama-python /path/to/venv/bin/python] [--llama-quantize /path/to/llama-quantize]
        [--convert-python /path/to/venv/bin/python --convert-script /path/to/convert_hf_to_gguf.py]
        [--runs 3] [--workdir DIR] [--skip-mlx]

Source: SmolLM2-135M-Instruct from $ONDEVICE_TEST_MODELS_DIR (Q4_1 GGUF, the demo model),
dequantized once into a Hugging Face safetensors directory (BF16, q/k rows back in Hugging Face
order, tokenizer.json rebuilt), converted to an F16 GGUF by `ondevice quantize --type F16`. Then,
each timed `--runs` times (median wall time printed, never asserted):

- GGUF Q8_0 and Q4_K_M from the same F16 GGUF: `ondevice quantize F16 --type T --output F`
  (the whole command: start-up, output hashing, llama.cpp's quantizer from the
  llama-cpp-sys-2 build linked in ondevice) against `llama_cpp.llama_model_quantize` (llama-cpp-python
  built from its PyPI source: the call alone, and the whole python process; same thread count:
  all cores). ondevice's home remembers the source's digest after a first untimed run (as when a
  user quantizes one F16 file to several types); each row also times the same command with a
  fresh home, which hashes the source again. Whether the tensor
  data are byte-identical is printed (ondevice adds `ondevice.quantize.*` metadata keys, so whole
  files differ by design); and both llama.cpp versions. With `--llama-quantize`, llama.cpp's own
  `llama-quantize` command (best built from the llama.cpp that llama-cpp-python vendors, so the
  quantizer code is the same) is timed too, as a whole process in the same interleaved loop, with
  its default thread count (all cores, as the call above); its tensor bytes are compared with ondevice's.
- With `--convert-python` and `--convert-script`: conversion of the safetensors directory to GGUF
  F16 and Q8_0, `ondevice quantize DIR --type T --output F` (the Rust converter, no llama.cpp)
  against llama.cpp's own `convert_hf_to_gguf.py DIR --outtype f16|q8_0 --outfile F` run by that
  interpreter (it needs torch, transformers, sentencepiece, numpy; it imports the gguf-py beside
  it), both whole processes, a fresh output each run, interleaved run by run. As above, ondevice's
  home remembers the directory's file digests after a first untimed run; a fresh home (every file
  hashed again) is timed too. Tensor names, types, shapes and bytes are compared tensor by tensor.
- MLX 4-bit, group 64, from the safetensors directory: `ondevice quantize DIR --format mlx` against
  `python3 -m mlx_lm convert -q` (both whole commands, on the CPU); tensor bytes compared.

Needs: gguf and numpy (python3), mlx[cpu] and mlx-lm (python3), llama-cpp-python (in
--llama-python's environment); torch, transformers, sentencepiece and numpy in --convert-python's
environment (no model hub is contacted: HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1).
"""

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


CPU = []  # CPU seconds (user + system) of each finished child, in order


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd, **kw):
    start, cpu = time.perf_counter(), child_cpu()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    CPU.append(child_cpu() - cpu)
    return time.perf_counter() - start


def median_time(fn, runs):
    return statistics.median(fn(i) for i in range(runs))


def bf16_bytes(a: np.ndarray) -> bytes:
    u = a.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).tobytes()


def write_hf_dir(gguf_path: Path, out: Path) -> None:
    """The demo GGUF as a Hugging Face llama directory (what tests/support/mod.rs writes)."""
    import gguf

    r = gguf.GGUFReader(str(gguf_path))

    def field(k):
        f = r.fields[k]
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            if f.types[-1] == gguf.GGUFValueType.STRING:
                return [bytes(f.parts[i]).decode() for i in f.data]
            return [int(f.parts[i][0]) for i in f.data]
        if f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(f.parts[-1]).decode()
        return f.parts[-1][0].item()

    heads = field("llama.attention.head_count")
    kv_heads = field("llama.attention.head_count_kv")
    names = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    tensors = {}
    for t in r.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(d) for d in reversed(t.shape)]
        values = values.reshape(shape)
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        else:
            _, block, stem, kind = t.name.split(".")
            name = f"model.layers.{block}.{names[stem]}.{kind}"
            if stem in ("attn_q", "attn_k"):
                h = heads if stem == "attn_q" else kv_heads
                rows, cols = values.shape
                values = values.reshape(h, rows // h // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
        tensors[name] = (shape, bf16_bytes(values))
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in sorted(tensors):
        shape, data = tensors[name]
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for name in sorted(tensors):
            f.write(tensors[name][1])
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": field("llama.embedding_length"),
        "intermediate_size": field("llama.feed_forward_length"),
        "num_hidden_layers": field("llama.block_count"),
        "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "max_position_embeddings": field("llama.context_length"),
        "rms_norm_eps": field("llama.attention.layer_norm_rms_epsilon"),
        "rope_theta": field("llama.rope.freq_base"), "vocab_size": len(field("tokenizer.ggml.tokens")),
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokens, merges, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.merges"), field("tokenizer.ggml.token_type")
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in enumerate(types) if t == 3],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }
    (out / "tokenizer.json").write_text(json.dumps(tok))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "chat_template": field("tokenizer.chat_template"),
        "model_max_length": 8192, "tokenizer_class": "PreTrainedTokenizerFast"}))


def gguf_tensors(path: Path) -> dict:
    """Each tensor's type, shape and data digest, by name."""
    import gguf

    return {t.name: (t.tensor_type.name, [int(d) for d in t.shape],
                     hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest())
            for t in gguf.GGUFReader(str(path)).tensors}


def compare_tensors(ours: Path, ref: Path) -> str:
    """"yes (N tensors)" when names, types, shapes and bytes all agree, else what differs."""
    a, b = gguf_tensors(ours), gguf_tensors(ref)
    same = [n for n in a if a[n] == b.get(n)]
    if len(same) == len(a) == len(b):
        return f"yes ({len(a)} tensors)"
    differ = [f"{n} {a[n][0]}/{b[n][0]}{'' if a[n][0] != b[n][0] or a[n][1] != b[n][1] else ' bytes'}"
              for n in a if n in b and a[n] != b[n]]
    only = sorted(set(a) ^ set(b))
    return (f"no ({len(same)} of {len(a)} tensors identical, {len(b)} in the reference"
            + (f"; differ (ondevice/reference type): {', '.join(differ[:8])}{' …' if len(differ) > 8 else ''}" if differ else "")
            + (f"; only on one side: {', '.join(only[:8])}{' …' if len(only) > 8 else ''}" if only else "") + ")")


def gguf_tensor_digest(path: Path) -> str:
    import gguf

    h = hashlib.sha256()
    for t in gguf.GGUFReader(str(path)).tensors:
        h.update(t.name.encode())
        h.update(np.ascontiguousarray(t.data).tobytes())
    return h.hexdigest()


def safetensors_tensors(d: Path) -> dict:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        data = f.read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        for k, v in header.items():
            if k != "__metadata__":
                a, b = v["data_offsets"]
                out[k] = (v["dtype"], v["shape"], hashlib.sha256(data[8 + n + a:8 + n + b]).hexdigest())
    return out


LLAMA_QUANTIZE = r"""
import ctypes, sys, time, llama_cpp
src, dst, ftype = sys.argv[1].encode(), sys.argv[2].encode(), int(sys.argv[3])
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = ftype
p.nthread = 0
t = time.perf_counter()
rc = llama_cpp.llama_model_quantize(src, dst, ctypes.byref(p))
print(time.perf_counter() - t)
sys.exit(rc)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ondevice", default="target/release/ondevice")
    ap.add_argument("--llama-python", default=sys.executable)
    ap.add_argument("--llama-quantize", help="llama.cpp's llama-quantize binary, timed as a second peer")
    ap.add_argument("--convert-python",
                    help="a Python with torch and transformers, to time llama.cpp's convert_hf_to_gguf.py")
    ap.add_argument("--convert-script", help="llama.cpp's convert_hf_to_gguf.py (with its gguf-py beside it)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir")
    ap.add_argument("--skip-mlx", action="store_true", help="only the GGUF types")
    args = ap.parse_args()
    if bool(args.convert_python) != bool(args.convert_script):
        ap.error("--convert-python and --convert-script go together")
    models = Path(os.environ.get("ONDEVICE_TEST_MODELS_DIR", ".cache/models"))
    source = models / "SmolLM2-135M-Instruct.Q4_1.gguf"
    ondevice = str(Path(args.ondevice).resolve())
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-quantize-"))
    work.mkdir(parents=True, exist_ok=True)
    hf = work / "SmolLM2-135M-Instruct"
    if not hf.exists():
        hf.mkdir()
        write_hf_dir(source, hf)
    help_text = subprocess.run([ondevice, "quantize", "--help"], capture_output=True, text=True).stdout
    extra = ["--no-quality"] if "--no-quality" in help_text else []
    # ondevice's home for the timed runs: it remembers the source's digest after the first run
    # (cache/source-digests.json), as a user's home does when one F16 file is quantized to
    # several types; `ours_cold` times the first run's case.
    home = work / "home"
    home.mkdir(exist_ok=True)
    f16 = work / "f16.gguf"
    if not f16.exists():
        run([ondevice, "quantize", str(hf), "--type", "F16", "--output", str(f16)] + extra)
    # The first run hashes the source and remembers its digest.
    warm = work / "warm.gguf"
    warm.unlink(missing_ok=True)
    run([ondevice, "quantize", str(f16), "--type", "Q8_0", "--output", str(warm)] + extra,
        env=dict(os.environ, ONDEVICE_HOME=str(home)))
    warm.unlink()

    llama_version = subprocess.run(
        [args.llama_python, "-c", "import llama_cpp, ctypes; print('llama-cpp-python', llama_cpp.__version__)"],
        capture_output=True, text=True).stdout.strip()
    ours_version = subprocess.run([ondevice, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"source: {source.name} → safetensors BF16 → {f16.name} ({f16.stat().st_size} bytes); {args.runs} runs, median")
    print(f"ondevice: {ours_version}; llama.cpp's own quantizer: {llama_version}")
    lq_version = None
    if args.llama_quantize:
        args.llama_quantize = str(Path(args.llama_quantize).resolve())
        # --dry-run prints the build info and the sizes without writing anything.
        # "version: 0.5.0-dev (build 1, commit 0c1e570)"; older builds print "main: build = N (commit)".
        probe = subprocess.run([args.llama_quantize, "--dry-run", str(f16), "Q8_0"], capture_output=True, text=True)
        lines = (probe.stderr + probe.stdout).splitlines()
        lq_version = next((line.split(":", 1)[1].strip() for line in lines
                           if line.startswith("version:") or "build = " in line), "unknown")
        lq_version = lq_version.replace("build = ", "build ").replace(" (", ", ").rstrip(")")
    # llama.cpp's Python converter contacts no model hub.
    convert_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if args.convert_python:
        print(f"llama.cpp's converter: {convert_versions(args, convert_env)}")
    print(f"load average at the start: {load()}")
    print(f"{'task':<22}{'ondevice s':>12}{'reference s':>13}{'speed ratio':>13}  same tensor bytes")

    for name, ftype in [("Q8_0", 7), ("Q4_K_M", 15)]:
        ours_out = lambda i: work / f"ours-{name}-{i}.gguf"
        ref_out = lambda i: work / f"ref-{name}-{i}.gguf"

        def ours(i):
            ours_out(i).unlink(missing_ok=True)
            return run([ondevice, "quantize", str(f16), "--type", name, "--output", str(ours_out(i))] + extra,
                       env=dict(os.environ, ONDEVICE_HOME=str(home)))

        cold_times = []

        def ours_cold(i):
            # A fresh home: no remembered source digest, so the 271 MB source is hashed again.
            fresh = Path(tempfile.mkdtemp(prefix="home-", dir=work))
            ours_out(i).unlink(missing_ok=True)
            t = run([ondevice, "quantize", str(f16), "--type", name, "--output", str(ours_out(i))] + extra,
                    env=dict(os.environ, ONDEVICE_HOME=str(fresh)))
            shutil.rmtree(fresh)
            cold_times.append(t)

        process_times, ours_cpu, ref_cpu = [], [], []
        lq_out = lambda i: work / f"llama-quantize-{name}-{i}.gguf"
        lq_times, lq_cpu = [], []

        def llama_quantize(i):
            # The default thread count: all cores (hardware concurrency), as the call's nthread = 0.
            lq_out(i).unlink(missing_ok=True)
            lq_times.append(run([args.llama_quantize, str(f16), str(lq_out(i)), name]))
            lq_cpu.append(CPU[-1])

        def reference(i):
            ref_out(i).unlink(missing_ok=True)
            start, cpu = time.perf_counter(), child_cpu()
            r = subprocess.run([args.llama_python, "-c", LLAMA_QUANTIZE, str(f16), str(ref_out(i)), str(ftype)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
            process_times.append(time.perf_counter() - start)
            ref_cpu.append(child_cpu() - cpu)
            return float(r.stdout.strip().splitlines()[-1])

        # Interleaved, so a change in the machine's load hits both sides alike.
        times = []
        for i in range(args.runs):
            t = ours(i)
            ours_cpu.append(CPU[-1])
            times.append((t, reference(i)))
            if args.llama_quantize:
                llama_quantize(i)
            ours_cold(i)
            if i > 0:  # only run 0's outputs are compared
                for out in (ours_out(i), ref_out(i), lq_out(i)):
                    out.unlink(missing_ok=True)
        t_ours, t_ref = statistics.median(t for t, _ in times), statistics.median(t for _, t in times)
        same = gguf_tensor_digest(ours_out(0)) == gguf_tensor_digest(ref_out(0))
        t_proc = statistics.median(process_times)
        print(f"GGUF {name:<17}{t_ours:>12.2f}{t_ref:>13.2f}{t_ref / t_ours:>12.2f}x  {'yes' if same else 'no'}"
              f"  (reference as a whole process: {t_proc:.2f} s, ratio {t_proc / t_ours:.2f}x;"
              f" CPU s {statistics.median(ours_cpu):.2f} vs {statistics.median(ref_cpu):.2f})")
        t_cold = statistics.median(cold_times)
        print(f"  {name} with the source hashed again (a fresh home, no remembered digest): {t_cold:.2f} s,"
              f" ratio {t_ref / t_cold:.2f}x vs the call, {t_proc / t_cold:.2f}x vs the process")
        if args.llama_quantize:
            t_lq = statistics.median(lq_times)
            same_lq = gguf_tensor_digest(ours_out(0)) == gguf_tensor_digest(lq_out(0))
            print(f"  vs llama.cpp's llama-quantize process (version {lq_version}): {t_lq:.2f} s,"
                  f" ratio {t_lq / t_ours:.2f}x; same tensor bytes {'yes' if same_lq else 'no'};"
                  f" CPU s {statistics.median(ours_cpu):.2f} vs {statistics.median(lq_cpu):.2f}")

    if args.convert_python:
        bench_convert(args, ondevice, hf, home, work, extra, convert_env)

    if args.skip_mlx:
        finish(args, work)
        return

    def mlx_ours(i):
        d = work / f"ours-mlx-{i}"
        shutil.rmtree(d, ignore_errors=True)
        return run([ondevice, "quantize", str(hf), "--format", "mlx", "--bits", "4", "--group-size", "64",
                    "--output", str(d)])

    def mlx_ref(i):
        d = work / f"ref-mlx-{i}"
        shutil.rmtree(d, ignore_errors=True)
        return run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(hf), "--mlx-path", str(d), "-q",
                    "--q-bits", "4", "--q-group-size", "64"])

    t_ours, t_ref = median_time(mlx_ours, args.runs), median_time(mlx_ref, args.runs)
    same = safetensors_tensors(work / "ours-mlx-0") == safetensors_tensors(work / "ref-mlx-0")
    import mlx.core as mx
    import mlx_lm
    print(f"{'MLX 4-bit g64':<22}{t_ours:>12.2f}{t_ref:>13.2f}{t_ref / t_ours:>12.2f}x  {'yes' if same else 'no'}"
          f"  (mlx {mx.__version__}, mlx-lm {mlx_lm.__version__})")
    finish(args, work)


CONVERT_VERSIONS = r"""
import platform
from importlib.metadata import version
import numpy, torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {numpy.__version__},"
      f" sentencepiece {version('sentencepiece')}, Python {platform.python_version()}")
"""


def convert_versions(args, env: dict) -> str:
    """What --convert-script and --convert-python are: llama.cpp's commit, gguf-py, torch, …"""
    script = Path(args.convert_script)
    versions = subprocess.run([args.convert_python, "-c", CONVERT_VERSIONS], capture_output=True, text=True, env=env)
    if versions.returncode != 0:
        sys.exit(f"--convert-python cannot import what convert_hf_to_gguf.py needs:\n{versions.stderr.strip()}")
    # The script imports the gguf-py beside it, not an installed gguf.
    pyproject = script.parent / "gguf-py" / "pyproject.toml"
    gguf_version = next((line.split("=", 1)[1].strip().strip('"') for line in
                         (pyproject.read_text().splitlines() if pyproject.exists() else [])
                         if line.startswith("version")), "unknown")
    commit = subprocess.run(["git", "-C", str(script.parent), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    return f"{script.name}, commit {commit}, gguf-py {gguf_version}; {versions.stdout.strip()}"


def bench_convert(args, ondevice: str, hf: Path, home: Path, work: Path, extra: list, env: dict) -> None:
    """Safetensors directory → GGUF F16 and Q8_0: ondevice against llama.cpp's convert_hf_to_gguf.py."""
    script = str(Path(args.convert_script).resolve())
    # The first run from the directory hashes its files and remembers their digests in `home`.
    warm = work / "convert-warm.gguf"
    warm.unlink(missing_ok=True)
    run([ondevice, "quantize", str(hf), "--type", "F16", "--output", str(warm)] + extra,
        env=dict(os.environ, ONDEVICE_HOME=str(home)))
    warm.unlink()
    for name, outtype in [("F16", "f16"), ("Q8_0", "q8_0")]:
        ours_out, ref_out = work / f"convert-ours-{name}.gguf", work / f"convert-ref-{name}.gguf"
        times, cold_times, ours_cpu, ref_cpu = [], [], [], []

        def ours(home_dir: Path) -> float:
            ours_out.unlink(missing_ok=True)
            return run([ondevice, "quantize", str(hf), "--type", name, "--output", str(ours_out)] + extra,
                       env=dict(os.environ, ONDEVICE_HOME=str(home_dir)))

        # Interleaved, so a change in the machine's load hits both sides alike.
        for i in range(args.runs):
            t = ours(home)
            ours_cpu.append(CPU[-1])
            ref_out.unlink(missing_ok=True)
            t_ref = run([args.convert_python, script, str(hf), "--outtype", outtype, "--outfile", str(ref_out)],
                        env=env)
            ref_cpu.append(CPU[-1])
            times.append((t, t_ref))
            # A fresh home: no remembered digests, so the directory's files are hashed again.
            fresh = Path(tempfile.mkdtemp(prefix="home-", dir=work))
            cold_times.append(ours(fresh))
            shutil.rmtree(fresh)
        t_ours, t_ref = statistics.median(t for t, _ in times), statistics.median(t for _, t in times)
        same = compare_tensors(ours_out, ref_out)
        print(f"{'convert HF→GGUF ' + name:<22}{t_ours:>12.2f}{t_ref:>13.2f}{t_ref / t_ours:>12.2f}x  {same}"
              f"  (CPU s {statistics.median(ours_cpu):.2f} vs {statistics.median(ref_cpu):.2f})")
        t_cold = statistics.median(cold_times)
        print(f"  {name} with the directory hashed again (a fresh home, no remembered digests): {t_cold:.2f} s,"
              f" ratio {t_ref / t_cold:.2f}x")
        ours_out.unlink()
        ref_out.unlink()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} cores)"


def finish(args, work: Path) -> None:
    print(f"load average at the end: {load()}")
    print("speed ratio = reference time / ondevice time (above 1: ondevice is faster)")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

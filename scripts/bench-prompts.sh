#!/usr/bin/env bash
# Prompt pack benchmark (prints figures, asserts nothing): render throughput of ondevice's
# sandboxed minijinja against Python jinja2's SandboxedEnvironment on the same templates and
# context, and compression time per 10k tokens (crates/ondevice-prompts/examples/bench_prompts.rs).
# Usage: scripts/bench-prompts.sh   (needs python3 with jinja2: pip install jinja2)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --quiet -p ondevice-prompts --example bench_prompts | tee /tmp/ondevice-bench-prompts.txt
python3 - <<'PY'
import re, time
from jinja2.sandbox import SandboxedEnvironment
src = open("crates/ondevice-prompts/examples/bench_prompts.rs").read()
block = src[src.index("pub const TEMPLATES"):src.index("];", src.index("pub const TEMPLATES"))]
templates = [(m.group(1), bytes(m.group(2), "utf-8").decode("unicode_escape"))
             for m in re.finditer(r'\(\s*"(\w+)",\s*"((?:[^"\\]|\\.)*)",?\s*\)', block)]
ctx = {
    "style": "brief",
    "text": "The quick brown fox jumps over the lazy dog. " * 20,
    "q": "What does the fox do?",
    "docs": [{"title": f"Doc {i}", "text": "Some text of a document."} for i in range(10)],
}
ours = {}
for line in open("/tmp/ondevice-bench-prompts.txt"):
    m = re.match(r"render (\w+)\s+ondevice\s+(\d+)", line)
    if m:
        ours[m.group(1)] = float(m.group(2))
env = SandboxedEnvironment()
n = 20000
for name, t in templates:
    # Same work as ours: parse and render each time (our sandbox compiles per render).
    start = time.perf_counter()
    for _ in range(n):
        env.from_string(t).render(**ctx)
    compiled = n / (time.perf_counter() - start)
    tmpl = env.from_string(t)
    start = time.perf_counter()
    for _ in range(n):
        tmpl.render(**ctx)
    cached = n / (time.perf_counter() - start)
    r = ours.get(name, 0.0)
    print(f"render {name:<12} jinja2 sandbox {compiled:>9.0f} renders/s (parse+render), {cached:>9.0f} (cached template); "
          f"ondevice/jinja2 = {r / compiled:.2f}x (parse+render), {r / cached:.2f}x (cached)")
PY

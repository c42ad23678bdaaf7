"""mlx-lm as the MLX test's peer, all in one process (importing mlx-lm alone takes seconds):

    python3 generate.py MODEL_DIR...
    python3 generate.py [--convert HF_DIR OUT_DIR BITS GROUP]... [MODEL_DIR]...

Each `--convert` is mlx-lm's own conversion, the call `python3 -m mlx_lm convert --hf-path HF_DIR
--mlx-path OUT_DIR -q --q-bits BITS --q-group-size GROUP` makes; conversions run first. Then each
MODEL_DIR is loaded with mlx-lm and answers "What is the capital of France?" (system "You are a
helpful assistant.") greedily in up to 32 tokens, printed as one line `answer MODEL_DIR: TEXT`.
Used by tests/mlx.rs.

The model computes in float32: the packed weights are the directory's own, its BF16/F16 scales,
biases and unquantized tensors are widened exactly. MLX's CPU backend has no fast BF16/F16
matrix product: in the checkpoint's BF16 one forward pass of SmolLM2-135M took 75 s here, in
float32 2 s, so the three answers took four minutes before (the GPU backends, where these
models usually run, compute in BF16 at full speed).
"""

import sys

import mlx.core as mx
from mlx_lm import convert, generate, load

QUESTION = "What is the capital of France?"


def answer(model_dir: str) -> str:
    model, tokenizer = load(model_dir)
    model.set_dtype(mx.float32)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": QUESTION},
    ]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    # The default sampler is greedy (temperature 0).
    return generate(model, tokenizer, prompt=prompt, max_tokens=32, verbose=False)


def main() -> None:
    mx.set_default_device(mx.cpu)
    args = sys.argv[1:]
    models = []
    while args:
        if args[0] == "--convert":
            hf, out, bits, group = args[1:5]
            args = args[5:]
            convert(hf, mlx_path=out, quantize=True, q_bits=int(bits), q_group_size=int(group))
        else:
            models.append(args.pop(0))
    for model_dir in models:
        text = answer(model_dir)
        print(f"answer {model_dir}: " + text.replace("\n", " "), flush=True)


if __name__ == "__main__":
    main()

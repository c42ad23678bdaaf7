"""Loads an MLX-LM directory with mlx-lm and prints the greedy answer to one chat question.

    python3 generate.py MODEL_DIR [QUESTION]

Used by tests/mlx.rs: the answer to "What is the capital of France?" (system "You are a helpful
assistant.") is printed on the last line, after `answer: `.
"""

import sys

import mlx.core as mx
from mlx_lm import generate, load


def main() -> None:
    mx.set_default_device(mx.cpu)
    model_dir = sys.argv[1]
    question = sys.argv[2] if len(sys.argv) > 2 else "What is the capital of France?"
    model, tokenizer = load(model_dir)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": question},
    ]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    # The default sampler is greedy (temperature 0).
    text = generate(model, tokenizer, prompt=prompt, max_tokens=32, verbose=False)
    print("answer: " + text.replace("\n", " "))


if __name__ == "__main__":
    main()

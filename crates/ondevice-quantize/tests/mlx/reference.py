"""MLX's own affine quantization of every tensor in a safetensors file, for every (bits, group size).

    python3 reference.py IN.safetensors OUT.safetensors

For each tensor NAME of IN and each bits in 2, 3, 4, 5, 6, 8 and group size in 32, 64, 128 that
divides its rows, OUT holds NAME.b{bits}.g{group}.{weight,scales,biases}: the three arrays
`mlx.core.quantize(w, group_size, bits)` returns on the CPU. Used by tests/mlx_exact.rs.
"""

import sys

import mlx.core as mx


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    out = {}
    for name, w in mx.load(src).items():
        for bits in (2, 3, 4, 5, 6, 8):
            for group in (32, 64, 128):
                if w.shape[-1] % group:
                    continue
                q, s, b = mx.quantize(w, group_size=group, bits=bits, mode="affine", stream=mx.cpu)
                key = f"{name}.b{bits}.g{group}"
                out[f"{key}.weight"] = q
                out[f"{key}.scales"] = s
                out[f"{key}.biases"] = b
    mx.eval(out)
    mx.save_safetensors(dst, out, metadata={"format": "mlx"})
    print(f"mlx {mx.__version__}: {len(out) // 3} quantizations")


if __name__ == "__main__":
    main()

"""Lowers impl=pallas's GPU kernels (mta/attention/pallas_gpu.py) for CUDA on this machine, no GPU
needed, and reports each Triton module: whether it passes MLIR verification and the size of its
text. A proxy for compile cost until a GPU run measures it: it grows with the heads a program
holds (the heads its mixing joins).

    python scripts/gpu_kernel_ir.py                   # the settings below at T = 2048
    python scripts/gpu_kernel_ir.py --T 8192 --heads 16 --dim 64
"""

import argparse
import time

import jax
import jax.numpy as jnp

from mta.attention import pallas_gpu
from mta.attention.pallas_gpu_grid import lower_for_cuda

SETTINGS = {  # name -> the MTA kernels (c_q, c_k) and mixing forms
    "pre conv 6x11": dict(kq_pre=(6, 11)),
    "pre + post conv 6x11": dict(kq_pre=(6, 11), kq_post=(6, 11)),
    "pre + post, grouped mixing c_h=2": dict(
        kq_pre=(6, 11), kq_post=(6, 11), head_pre="grouped", head_post="grouped"
    ),
    "release: pre + post, linear pre, grouped post": dict(
        kq_pre=(6, 11), kq_post=(6, 11), head_pre="linear", head_post="grouped"
    ),
}


def kernels(setting: dict, heads: int) -> dict:
    """Abstract float32 MTA kernels of a SETTINGS entry."""
    spec = jax.ShapeDtypeStruct
    out = {}
    for name, form in setting.items():
        if name.startswith("kq"):
            out[name] = spec((heads, *form), jnp.float32)
        else:
            shape = (heads, heads) if form == "linear" else (heads // 2, 2, 2)
            out[name] = spec(shape, jnp.float32)
    return out


def lower(setting: dict, num_t: int, heads: int, dim: int) -> list:
    """Forward + backward of bfloat16 attention lowered for CUDA -> the Triton modules built."""
    q = jax.ShapeDtypeStruct((1, num_t, heads, dim), jnp.bfloat16)

    def loss(q, k, v, weights):
        return pallas_gpu.attention(q, k, v, **weights).astype(jnp.float32).sum()

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
    return lower_for_cuda(grad, q, q, q, kernels(setting, heads))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    print(f"T={args.T} H={args.heads} D={args.dim} bfloat16, jax {jax.__version__}")
    print(
        "| setting | Triton modules (forward, then backward): MB of text | verified | lowering s |"
    )
    print("|---|---|---|---:|")
    for name, setting in SETTINGS.items():
        start = time.perf_counter()
        modules = lower(setting, args.T, args.heads, args.dim)
        seconds = time.perf_counter() - start
        sizes = ", ".join(f"{len(str(m)) / 1e6:.2f}" for m in modules)
        verified = all(m.operation.verify() for m in modules)
        print(f"| {name} | {sizes} | {verified} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()

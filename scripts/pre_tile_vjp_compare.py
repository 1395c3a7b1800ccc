"""The VJP of an off-band pre-softmax tile two ways, checked equal, then timed per tile:

  wide   the widened matmul's VJP blockwise uses (blockwise_tiles._wide_grads): dq, dk and the
         kernel gradient from two matmuls min(c_q, c_k) * D wide
  conv_t the transposed conv of the tile's cotangent (a flat depthwise conv with the kernel
         flipped), two plain matmuls for dq and dk, and the kernel gradient as tap sums over the
         tile's logits (one more plain matmul)

Release setting (6 x 11 taps), one tile of the CPU block sizes, H = 8, D = 64:

    python scripts/pre_tile_vjp_compare.py

The result is in docs/benchmarks.md ("attention at long T: the lean blockwise path").
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mta.attention.blockwise_plan import Plan, default_blocks
from mta.attention.blockwise_tiles import _wide_grads
from mta.attention.depthwise import _tap_sums, flat_sum
from mta.attention.kernels import KernelSpec


def conv_t_grads(q_BRHD, k_BCKD, theta_HQK, d_y_BHRC):
    """(dq, dk, d theta) of y = conv_pre(q k^T / sqrt(D)) on a tile with its halo (no mask)."""
    _, c_q, c_k = theta_HQK.shape
    batch, heads, rows, cols = d_y_BHRC.shape
    scale = q_BRHD.shape[-1] ** -0.5
    padded = jnp.pad(d_y_BHRC, ((0, 0), (0, 0), (c_q - 1, c_q - 1), (c_k - 1, c_k - 1)))
    stride = padded.shape[3]
    flat = jnp.pad(padded.reshape(batch, heads, -1), ((0, 0), (0, 0), (0, c_k - 1)))
    d_x = flat_sum(flat, theta_HQK[:, ::-1, ::-1], stride, (rows + c_q - 1) * stride)
    d_x = d_x.reshape(batch, heads, rows + c_q - 1, stride)[..., : cols + c_k - 1] * scale
    d_q = jnp.einsum("bhrc,bchd->brhd", d_x, k_BCKD)
    d_k = jnp.einsum("bhrc,brhd->bchd", d_x, q_BRHD)
    x = jnp.einsum("brhd,bchd->bhrc", q_BRHD, k_BCKD) * scale
    d_theta = _tap_sums(d_y_BHRC, lambda a, b: x[:, :, a : a + rows, b : b + cols], c_q, c_k)
    return d_q, d_k, d_theta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--tiles", type=int, default=32, help="tiles per timed call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    c_q, c_k, dim, heads = 6, 11, 64, args.heads
    block_q, block_k = default_blocks("cpu")
    rng = np.random.default_rng(0)

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    q = normal(1, block_q + c_q - 1, heads, dim)
    k = normal(1, block_k + c_k - 1, heads, dim)
    theta = normal(heads, c_q, c_k) * 0.1
    d_y = normal(1, heads, block_q, block_k)
    spec = KernelSpec.of(heads, kq_pre=theta)
    plan = Plan(4 * block_q, 4 * block_k, block_q, block_k, spec, True)

    def wide(q, k, theta, d_y):
        d_q, d_k, grads = _wide_grads(plan, q, k, {"kq_pre": theta}, d_y, d_y)
        return d_q, d_k, grads["kq_pre"]

    for got, want in zip(conv_t_grads(q, k, theta, d_y), wide(q, k, theta, d_y), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(jnp.abs(want).max()))

    def repeated(fn):
        def run(q, k, theta, d_y):
            def body(i, acc):
                return acc + sum(g.sum() for g in fn(q, k, theta, d_y + i))

            return jax.lax.fori_loop(0, args.tiles, body, 0.0)

        return jax.jit(run)

    for name, fn in (("wide", wide), ("conv_t", conv_t_grads)):
        run = repeated(fn)
        run(q, k, theta, d_y).block_until_ready()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run(q, k, theta, d_y).block_until_ready()
            times.append((time.perf_counter() - start) / args.tiles * 1e3)
        print(f"{name}: {np.median(times):.2f} ms per tile ({block_q} x {block_k}, H={heads})")


if __name__ == "__main__":
    main()

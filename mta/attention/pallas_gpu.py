"""MTA before the softmax as Pallas kernels shaped for the Triton (GPU) lowering: key-query conv,
head mixing, causal and document masks, GQA, online softmax; forward here, backward in
pallas_gpu_backward.py, tile math (halos as shifted loads; clean and exact tiles) in
pallas_gpu_tiles.py.

Forward: a program (batch row, query block, head group) holds the heads its pre mixing joins (1
without mixing, c_h grouped, all H for [H, H]), runs an online softmax over the key blocks up to
the causal end and writes the output and the row log-sum-exp. Block sizes and D must be powers of
two, at least 16, for Triton; interpret mode takes any.
"""

from functools import partial

import jax
import jax.numpy as jnp

from mta.attention import pallas_gpu_backward
from mta.attention.kernels import dense_mixing
from mta.attention.pallas_gpu_grid import call, pad_time, padded_inputs
from mta.attention.pallas_gpu_tiles import Layout, Tiles, dot_nn

BLOCK_Q = 64
BLOCK_K = 64


def attention(
    q,
    k,
    v,
    kq_pre=None,
    head_pre=None,
    segment_ids=None,
    *,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
    interpret: bool = False,
):
    """q [B,T,H,D], k/v [B,S,K,D] (K divides H) -> [B,T,H,D] (v's dtype); kq_pre [H, c_q, c_k],
    head_pre [H, H] (linear) or [H // c_h, c_h, c_h] (grouped) and segment_ids [B, T] (T == S)
    as in the reference; gradients w.r.t. q, k, v, kq_pre and head_pre."""
    c_q, c_k = kq_pre.shape[1:] if kq_pre is not None else (1, 1)
    if c_q - 1 > block_q or c_k - 1 > block_k:
        raise ValueError(
            f"the GPU kernel reads a halo of at most one block: c_q - 1 <= block_q and "
            f"c_k - 1 <= block_k, got c_q={c_q}, c_k={c_k}, blocks {block_q} x {block_k}"
        )
    heads = q.shape[2]
    group = 1 if head_pre is None else heads if head_pre.ndim == 2 else head_pre.shape[1]
    lay = Layout(
        q.shape[1], k.shape[1], heads, k.shape[2], q.shape[3], block_q, block_k, (c_q, c_k),
        group, head_pre is not None, segment_ids is not None, interpret,
    )  # fmt: skip
    return _attend(lay, q, k, v, kq_pre, head_pre, segment_ids)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(lay: Layout, q, k, v, kq_pre, head_pre, segment_ids):
    return forward(lay, padded_inputs(lay, q, k, v, kq_pre, head_pre, segment_ids))[0]


def _attend_fwd(lay, q, k, v, kq_pre, head_pre, segment_ids):
    inputs = padded_inputs(lay, q, k, v, kq_pre, head_pre, segment_ids)
    out, lse = forward(lay, inputs)
    return out, (inputs, out, lse, kq_pre, head_pre)


def _attend_bwd(lay, residuals, d_out):
    inputs, out, lse, kq_pre, head_pre = residuals
    dq, dk, dv, d_theta, d_mix = pallas_gpu_backward.backward(lay, inputs, out, lse, d_out)
    dq, dk, dv = (g.astype(inputs[n].dtype) for g, n in ((dq, "q"), (dk, "k"), (dv, "v")))
    d_kq = None if kq_pre is None else d_theta.astype(kq_pre.dtype)
    d_head = None
    if head_pre is not None:
        d_head = jax.vjp(dense_mixing, head_pre)[1](d_mix.astype(head_pre.dtype))[0]
    return dq, dk, dv, d_kq, d_head, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def forward(lay: Layout, inputs: dict):
    """-> out [B, T, H, D] (v's dtype), lse [B, H, rows] (padded like q, 0 on padding)."""
    batch, rows = inputs["q"].shape[0], lay.num_qb * lay.block_q
    group, bq = lay.group, lay.block_q
    out, lse = call(lay, forward_kernel, False, inputs, [
        ((batch, lay.heads, rows, lay.dim), jnp.float32, (None, group, bq, lay.dim),
         lambda b, i, g: (b, g, i, 0)),
        ((batch, lay.heads, rows), jnp.float32, (None, group, bq), lambda b, i, g: (b, g, i)),
    ], "mta_pre_gpu_forward")  # fmt: skip
    out = jnp.swapaxes(out[:, :, : lay.num_t], 1, 2).astype(inputs["v"].dtype)
    return out, pad_time(lse, (lay.pad_rows, 0))


def forward_kernel(tiles: Tiles, i0, heads, o_ref, lse_ref):
    """Online softmax over the key blocks of query block i0: o_ref [G, bq, D], lse_ref [G, bq]."""
    lay = tiles.lay
    bq = lay.block_q

    def step(kb, carry):
        j0 = kb * lay.block_k
        y = tiles.mixed(heads, [tiles.logits(h, i0, j0) for h in heads])
        keep = tiles.allowed(i0, j0)
        new = []
        for h, y_h, (m, l_, acc) in zip(heads, y, carry, strict=True):
            x = jnp.where(keep, y_h, -jnp.inf)
            m_new = jnp.maximum(m, x.max(axis=1))
            shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            p = jnp.exp(x - shift[:, None])
            alpha = jnp.exp(m - shift)
            v = tiles.cols("v", h, j0)
            acc = acc * alpha[:, None] + dot_nn(p.astype(v.dtype), v)
            new.append((m_new, l_ * alpha + p.sum(axis=1), acc))
        return tuple(new)

    start = tuple(
        (jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32),
         jnp.zeros((bq, lay.dim), jnp.float32))
        for _ in heads
    )  # fmt: skip
    final = jax.lax.fori_loop(0, lay.key_block_end(i0), step, start)
    for t, (m, l_, acc) in enumerate(final):
        seen = l_ > 0  # padding rows see no key: output 0, lse 0
        o_ref[t, :, :] = acc / jnp.where(seen, l_, 1.0)[:, None]
        lse_ref[t, :] = jnp.where(seen, m + jnp.log(jnp.where(seen, l_, 1.0)), 0.0)

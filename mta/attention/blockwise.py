"""Multi-Token Attention, blockwise: the contract and results of mta.multi_token_attention in
O(T * block) memory, forward and backward (impl="blockwise"). See docs/mta.md and reference.py.

    A = mask_0(mix_post(conv_post(softmax(mask_-inf(mix_pre(conv_pre(mask_0(q k^T / sqrt(D))))))))
    out = A v

The T x S matrices are never built. Queries are cut into blocks of block_q rows, keys into blocks
of block_k columns (both padded internally), and every quantity is computed one tile at a time,
each tile with the halo its convolutions read:

- pre tile (queries i0.., keys j0..): logits of c_q - 1 extra query rows above and (c_k - 1) / 2
  extra key columns each side, zero-masked (causal + document + out of range), pre conv (valid),
  head mixing (all heads are in the tile), then the -inf mask;
- pass 1 (row statistics): per query block, an online max / sum of exp over its key blocks, kept
  for every row ([B, H, T]: the post conv needs the statistics of rows above a block too);
- pass 2 (output): per tile, the normalised probabilities of c_q' - 1 rows above and
  (c_k' - 1) / 2 columns each side (pre tiles with a double halo), post conv, post mixing,
  mask_0, then tile @ V accumulated over key blocks.

Key blocks that causality leaves entirely masked are skipped (document masks are not used to skip:
ids need not be contiguous). Documents (segment_ids) follow the dense rule of conv.py: a query-axis
tap never reads a row of another document.

Backward (jax.custom_vjp): the saved residuals are the inputs and the row statistics (m, l), so
the backward also needs O(T * block) memory. Query blocks are visited last to first; for each, a
loop over its key blocks takes the VJP of the pass-2 tile (recomputed) w.r.t. q, k, v, the kernels
and the row sums l of its rows and halo rows. Rows of a block appear only in the halos of later
blocks, so after that loop their dl is complete, and a second loop adds the gradient through l
(dl_i * d l_i: a VJP of sum_ij dl_i exp(x_ij - m_i) over the pre tiles). The row maxima m are
constants (the output does not depend on them). Forward-mode autodiff (jvp) is not defined.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange
from jax import lax

from mta.attention.blockwise_tiles import (
    Blocks,
    Plan,
    add_at,
    dynamic_slice,
    exp_tile,
    out_tile,
    pad_axis,
    padded_inputs,
    pre_tile,
)
from mta.attention.core import check_heads, check_segments
from mta.attention.kernels import KernelSpec

BLOCK_Q = 128
BLOCK_K = 128


def multi_token_attention_blockwise(
    q,
    k,
    v,
    kq_pre=None,
    head_pre=None,
    kq_post=None,
    head_post=None,
    segment_ids=None,
    *,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
    tuned: bool = False,
) -> jax.Array:
    """Blockwise MTA: q [B,T,H,D], k/v [B,S,K,D] (K divides H) -> [B,T,H,D] (v's dtype).

    Same arguments and result as the reference (mta/attention/reference.py), including a 5-D
    head_pre (the full 3-D pre conv); block_q / block_k need not divide T / S. Memory is
    O(B * H * block_q * block_k) per tile plus O(B * T * H * D), forward and backward.
    tuned: the tiles' convolutions and mixing use the hand-written VJPs of conv.py.
    """
    given = dict(kq_pre=kq_pre, head_pre=head_pre, kq_post=kq_post, head_post=head_post)
    spec = KernelSpec.of(q.shape[2], **given)
    kernels = {name: kernel for name, kernel in given.items() if kernel is not None}
    check_heads(q.shape[2], k.shape[2])
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape} do not fit [B,T,H,D], [B,S,K,D]")
    if q.shape[1] > k.shape[1]:
        raise ValueError(f"queries are the last T of S keys: T={q.shape[1]} > S={k.shape[1]}")
    check_segments(segment_ids, q.shape, k.shape)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}")
    num_t, num_s = q.shape[1], k.shape[1]
    plan = Plan(num_t, num_s, min(block_q, num_t), min(block_k, num_s), spec, tuned)
    return _attend(plan, q, k, v, kernels, segment_ids)


# --- forward ---------------------------------------------------------------------------------


def _row_stats(plan: Plan, kernels, blocks: Blocks):
    """Pass 1: row max m and sum l of exp(x - m) for every query: [B, H, num_qb * block_q] each.

    Rows without an allowed key (padding) get m = 0, l = 1.
    """

    def block_stats(qb):
        def step(kb, carry):  # online max / sum over key blocks
            m_BHR, l_BHR = carry
            q, k, segs, row0, col0 = blocks.pre_tile_args(qb, kb)
            y_BHRC, allowed = pre_tile(plan, kernels, q, k, row0, col0, *segs)
            x_BHRC = jnp.where(allowed, y_BHRC, -jnp.inf)
            m_new = jnp.maximum(m_BHR, x_BHRC.max(axis=-1))
            shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            l_new = l_BHR * jnp.exp(m_BHR - shift) + jnp.exp(x_BHRC - shift[..., None]).sum(-1)
            return m_new, l_new

        batch, heads = blocks.q_pad.shape[0], blocks.q_pad.shape[2]
        init = (
            jnp.full((batch, heads, plan.block_q), -jnp.inf),
            jnp.zeros((batch, heads, plan.block_q)),
        )
        m_BHR, l_BHR = lax.fori_loop(0, plan.key_blocks(qb), step, init)
        return jnp.where(jnp.isfinite(m_BHR), m_BHR, 0.0), jnp.where(l_BHR > 0, l_BHR, 1.0)

    m_NBHR, l_NBHR = lax.map(block_stats, jnp.arange(plan.num_qb))
    return tuple(rearrange(x, "n b h r -> b h (n r)") for x in (m_NBHR, l_NBHR))


def _stats_padded(plan: Plan, m_BHT, l_BHT):
    """Stats with c_q' - 1 rows on top (m = 0, l = 1): padded row i + c_q' - 1 is query i."""
    top = plan.post_cq - 1
    return pad_axis(m_BHT, 2, top, 0, 0.0), pad_axis(l_BHT, 2, top, 0, 1.0)


def _forward(plan: Plan, q, k, v, kernels, segment_ids):
    """Both passes: -> out [B, T, H, D] (v's dtype), padded stats (m, l) [B, H, c_q'-1 + T_pad]."""
    blocks = Blocks(plan, padded_inputs(plan, q, k, v, segment_ids))
    m_BHT, l_BHT = _stats_padded(plan, *_row_stats(plan, kernels, blocks))
    rows = plan.block_q + plan.post_cq - 1

    def block_out(qb):
        m_BHR = dynamic_slice(m_BHT, qb * plan.block_q, rows, 2)
        l_BHR = dynamic_slice(l_BHT, qb * plan.block_q, rows, 2)

        def step(kb, acc_BRHD):
            q_t, k_t, v_t, segs, row0, col0 = blocks.out_tile_args(qb, kb)
            tile = out_tile(plan, kernels, q_t, k_t, v_t, m_BHR, l_BHR, row0, col0, segs)
            return acc_BRHD + tile

        acc = jnp.zeros((q.shape[0], plan.block_q, q.shape[2], q.shape[3]), jnp.float32)
        return lax.fori_loop(0, plan.key_blocks(qb), step, acc)

    out_NBRHD = lax.map(block_out, jnp.arange(plan.num_qb))
    out_BTHD = rearrange(out_NBRHD, "n b r h d -> b (n r) h d")[:, : plan.num_t]
    return out_BTHD.astype(v.dtype), (m_BHT, l_BHT)


# --- custom VJP ------------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(plan: Plan, q, k, v, kernels, segment_ids):
    return _forward(plan, q, k, v, kernels, segment_ids)[0]


def _attend_fwd(plan: Plan, q, k, v, kernels, segment_ids):
    out, stats = _forward(plan, q, k, v, kernels, segment_ids)
    return out, (q, k, v, kernels, segment_ids, stats)


class _Grads(NamedTuple):
    """Backward accumulators (float32): dq, dk, dv in the layouts of padded_inputs, d kernels,
    and dl, the gradient w.r.t. the row sums l, laid out like the padded stats."""

    dq: jax.Array
    dk: jax.Array
    dv: jax.Array
    d_kernels: dict
    dl: jax.Array


def _attend_bwd(plan: Plan, residuals, d_out_BTHD):
    """Gradients w.r.t. q, k, v and the kernels, recomputing tiles; None for segment_ids."""
    q, k, v, kernels, segment_ids, (m_BHT, l_BHT) = residuals
    inputs = padded_inputs(plan, q, k, v, segment_ids)
    blocks = Blocks(plan, inputs)
    zeros = partial(jax.tree.map, lambda x: jnp.zeros(x.shape, jnp.float32))
    grads = _Grads(*zeros((inputs[0], inputs[1], inputs[2], kernels, l_BHT)))
    # d out: b t h d -> b (n r) h d, zero rows below T
    d_out = pad_axis(d_out_BTHD.astype(jnp.float32), 1, 0, plan.num_qb * plan.block_q - plan.num_t)
    step = partial(_backward_block, plan, kernels, blocks, d_out, m_BHT, l_BHT)
    grads = lax.fori_loop(0, plan.num_qb, lambda it, g: step(plan.num_qb - 1 - it, g), grads)
    dq = grads.dq[:, plan.rows_above : plan.rows_above + plan.num_t].astype(q.dtype)
    dk = grads.dk[:, plan.cols_side : plan.cols_side + plan.num_s].astype(k.dtype)
    dv = grads.dv[:, plan.cols_side : plan.cols_side + plan.num_s].astype(v.dtype)
    d_kernels = jax.tree.map(lambda g, x: g.astype(x.dtype), grads.d_kernels, kernels)
    return dq, dk, dv, d_kernels, None


def _backward_block(plan: Plan, kernels, blocks, d_out, m_BHT, l_BHT, qb, grads: _Grads):
    """Adds query block qb's gradients; the blocks after qb must have been done already.

    First the output tiles (q, k, v, kernels, and dl of the block's rows and halo rows), then,
    with dl of the block's own rows complete, the gradient through those rows' sums l.
    """
    rows = plan.block_q + plan.post_cq - 1
    i0 = qb * plan.block_q
    m_BHR, l_BHR = dynamic_slice(m_BHT, i0, rows, 2), dynamic_slice(l_BHT, i0, rows, 2)
    d_out_BRHD = dynamic_slice(d_out, i0, plan.block_q, 1)
    out_step = partial(_out_tile_grads, plan, kernels, blocks, d_out_BRHD, m_BHR, l_BHR, qb)
    grads = lax.fori_loop(0, plan.key_blocks(qb), out_step, grads)
    own = plan.post_cq - 1  # the block's own rows in the [B, H, rows] stats slices
    dl_BHR = dynamic_slice(grads.dl, i0 + own, plan.block_q, 2)
    stats_step = partial(_row_sum_grads, plan, kernels, blocks, dl_BHR, m_BHR[..., own:], qb)
    return lax.fori_loop(0, plan.key_blocks(qb), stats_step, grads)


def _out_tile_grads(plan, kernels, blocks, d_out_BRHD, m_BHR, l_BHR, qb, kb, grads: _Grads):
    """VJP of output tile (qb, kb) w.r.t. q, k, v, kernels and l (m held constant)."""
    q_t, k_t, v_t, segs, row0, col0 = blocks.out_tile_args(qb, kb)

    def tile(q_t, k_t, v_t, kern, l_BHR):
        return out_tile(plan, kern, q_t, k_t, v_t, m_BHR, l_BHR, row0, col0, segs)

    _, vjp = jax.vjp(tile, q_t, k_t, v_t, kernels, l_BHR)
    g_q, g_k, g_v, g_kern, g_l = vjp(d_out_BRHD)
    i0, j0 = qb * plan.block_q, kb * plan.block_k
    return _Grads(
        add_at(grads.dq, i0, g_q, 1),
        add_at(grads.dk, j0, g_k, 1),
        add_at(grads.dv, j0 + plan.cols_side, g_v, 1),
        _add_tree(grads.d_kernels, g_kern),
        add_at(grads.dl, i0, g_l, 2),
    )


def _row_sum_grads(plan, kernels, blocks, dl_BHR, m_BHR, qb, kb, grads: _Grads):
    """Gradient through the row sums l_i = sum_j exp(x_ij - m_i) of block qb over key block kb:
    the VJP of sum_ij dl_i exp(x_ij - m_i) w.r.t. q, k and the pre kernels."""
    q_t, k_t, segs, row0, col0 = blocks.pre_tile_args(qb, kb)

    def total(q_t, k_t, kern):
        e_BHRC = exp_tile(plan, kern, q_t, k_t, m_BHR, row0, col0, segs)
        return jnp.sum(dl_BHR[..., None] * e_BHRC)

    _, vjp = jax.vjp(total, q_t, k_t, kernels)
    g_q, g_k, g_kern = vjp(jnp.ones((), jnp.float32))
    i0, j0 = qb * plan.block_q, kb * plan.block_k
    return grads._replace(
        dq=add_at(grads.dq, i0 + plan.post_cq - 1, g_q, 1),
        dk=add_at(grads.dk, j0 + plan.post_r, g_k, 1),
        d_kernels=_add_tree(grads.d_kernels, g_kern),
    )


def _add_tree(acc, update):
    return jax.tree.map(lambda a, b: a + b.astype(a.dtype), acc, update)


_attend.defvjp(_attend_fwd, _attend_bwd)

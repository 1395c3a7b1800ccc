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

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange
from jax import lax

from mta.attention.conv import grouped_conv_valid, mix_heads
from mta.attention.core import attention_logits, check_heads, check_segments, weight_values
from mta.attention.kernels import KernelSpec

BLOCK_Q = 128
BLOCK_K = 128


@dataclass(frozen=True)
class _Plan:
    """Static geometry: sizes, block counts and the halos of the pre and post convolutions."""

    num_t: int
    num_s: int
    block_q: int
    block_k: int
    spec: KernelSpec
    tuned: bool  # the conv and mixing VJPs of conv.py (XLA:CPU)

    @property
    def pre_cq(self) -> int:
        return self.spec.pre_taps[0]

    @property
    def post_cq(self) -> int:
        return self.spec.post_taps[0]

    @property
    def num_qb(self) -> int:
        return -(-self.num_t // self.block_q)

    @property
    def num_kb(self) -> int:
        return -(-self.num_s // self.block_k)

    @property
    def pre_r(self) -> int:
        return self.spec.pre_r

    @property
    def post_r(self) -> int:
        return self.spec.post_r

    @property
    def rows_above(self) -> int:
        """Query rows above a block that its output reads: (c_q - 1) + (c_q' - 1)."""
        return self.pre_cq - 1 + self.post_cq - 1

    @property
    def cols_side(self) -> int:
        """Key columns each side of a block that its output reads: r + r'."""
        return self.pre_r + self.post_r

    def key_blocks(self, qb):
        """Number of key blocks query block qb needs: the rest are causally masked (traced)."""
        last_key = qb * self.block_q + self.block_q - 1 + self.num_s - self.num_t
        return jnp.minimum(self.num_kb, last_key // self.block_k + 1)


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
    plan = _Plan(num_t, num_s, min(block_q, num_t), min(block_k, num_s), spec, tuned)
    return _attend(plan, q, k, v, kernels, segment_ids)


# --- tiles -----------------------------------------------------------------------------------


def _allowed(plan: _Plan, rows_R, cols_C, seg_BR, seg_BC):
    """Which (query, key) pairs of a tile may interact: [B or 1, 1, R, C] booleans.

    rows / cols are global query / key indices (may lie outside [0, T) / [0, S): not allowed).
    """
    inside_R = (rows_R >= 0) & (rows_R < plan.num_t)
    inside_C = (cols_C >= 0) & (cols_C < plan.num_s)
    causal_RC = cols_C[None, :] <= rows_R[:, None] + plan.num_s - plan.num_t
    allowed_RC = causal_RC & inside_R[:, None] & inside_C[None, :]
    if seg_BR is None:
        return allowed_RC[None, None]
    same_doc_BRC = seg_BR[:, :, None] == seg_BC[:, None, :]
    return (allowed_RC[None] & same_doc_BRC)[:, None]


def _conv_valid(x_BCRS, kernel_OIQK, groups: int, seg_BR, tuned: bool):
    """MTA conv without padding: x [B, C, R + c_q - 1, S + c_k - 1] -> [B, O, R, S] float32.

    Output row t reads input rows t .. t + c_q - 1 (its own row is the last); with seg_BR (ids of
    the input rows) a tap reads 0 from a row of another document than the output row's, so each
    query tap a convolves its own row window (foreign rows zeroed) along keys.
    Depthwise kernels run as shifted multiply-adds, 3-D head kernels through lax (conv.py).
    """
    c_q = kernel_OIQK.shape[2]
    if seg_BR is None or c_q == 1:
        return grouped_conv_valid(x_BCRS, kernel_OIQK, groups, tuned)
    num_rows = x_BCRS.shape[2] - (c_q - 1)
    out = 0.0
    for a in range(c_q):  # rows t + a of output row t, kept if in its document
        same_doc_BR = seg_BR[:, a : a + num_rows] == seg_BR[:, c_q - 1 :]
        rows_BCRS = jnp.where(same_doc_BR[:, None, :, None], x_BCRS[:, :, a : a + num_rows], 0.0)
        out = out + grouped_conv_valid(rows_BCRS, kernel_OIQK[:, :, a : a + 1], groups, tuned)
    return out


def _pre_tile(plan: _Plan, kernels, q_BRHD, k_BCKD, row0, col0, seg_BR, seg_BC):
    """Pre-softmax logits of a tile, before the -inf mask.

    q: [B, R + c_q - 1, H, D], queries row0 .. (global, may start above 0);
    k: [B, C + c_k - 1, K, D], keys col0 ..; seg_BR / seg_BC their document ids or None.
    -> y [B, H, R, C] float32 for queries row0 + c_q - 1 .., keys col0 + r ..; allowed [B|1,1,R,C].
    """
    rows_R = row0 + jnp.arange(q_BRHD.shape[1])
    cols_C = col0 + jnp.arange(k_BCKD.shape[1])
    allowed = _allowed(plan, rows_R, cols_C, seg_BR, seg_BC)
    # logits, mask_0: b r h d, b c k d -> b h r c
    x_BHRC = jnp.where(allowed, attention_logits(q_BRHD, k_BCKD), 0.0)
    head_pre = kernels.get("head_pre")
    if "kq_pre" in kernels:  # depthwise: h q k -> h 1 q k
        kernel_OIQK = rearrange(kernels["kq_pre"], "h q k -> h 1 q k").astype(jnp.float32)
        x_BHRC = _conv_valid(x_BHRC, kernel_OIQK, x_BHRC.shape[1], seg_BR, plan.tuned)
    elif head_pre is not None and head_pre.ndim == 5:  # 3-D conv: n i o q k -> (n o) i q k
        kernel_OIQK = rearrange(head_pre, "n i o q k -> (n o) i q k").astype(jnp.float32)
        x_BHRC = _conv_valid(x_BHRC, kernel_OIQK, head_pre.shape[0], seg_BR, plan.tuned)
    if head_pre is not None and head_pre.ndim in (2, 3):  # b h r c, (h h | n i o) -> b h r c
        x_BHRC = mix_heads(x_BHRC, head_pre, plan.tuned)
    allowed = allowed[..., plan.pre_cq - 1 :, plan.pre_r : allowed.shape[-1] - plan.pre_r]
    return x_BHRC, allowed


def _out_tile(plan: _Plan, kernels, q_BRHD, k_BCKD, v_BCKD, m_BHR, l_BHR, row0, col0, segs):
    """One output tile: queries row0 + rows_above .. (block_q of them), keys col0 + cols_side ...

    q: [B, block_q + rows_above, H, D]; k: [B, block_k + 2 cols_side, K, D]; v: [B, block_k, K, D];
    m, l: [B, H, block_q + c_q' - 1] row max / sum of the probability rows the post conv reads;
    segs: (seg_BR, seg_BC) of q's rows and k's columns, or (None, None).
    -> A[rows, cols] @ v[cols]: [B, block_q, H, D] float32.
    """
    seg_BR, seg_BC = segs
    y_BHRC, allowed = _pre_tile(plan, kernels, q_BRHD, k_BCKD, row0, col0, seg_BR, seg_BC)
    # softmax with known statistics: exp(y - m) / l, exactly 0 where masked
    p_BHRC = jnp.exp(jnp.where(allowed, y_BHRC - m_BHR[..., None], -jnp.inf)) / l_BHR[..., None]
    if "kq_post" in kernels:  # post conv on the probabilities (rows of this block only)
        kernel_OIQK = rearrange(kernels["kq_post"], "h q k -> h 1 q k").astype(jnp.float32)
        seg_post = None if seg_BR is None else seg_BR[:, plan.pre_cq - 1 :]
        p_BHRC = _conv_valid(p_BHRC, kernel_OIQK, p_BHRC.shape[1], seg_post, plan.tuned)
    if "head_post" in kernels:  # b (n i) r c, n i o -> b (n o) r c
        p_BHRC = mix_heads(p_BHRC, kernels["head_post"], plan.tuned)
    r = plan.post_r
    allowed = allowed[..., plan.post_cq - 1 :, r : allowed.shape[-1] - r]
    a_BHRC = jnp.where(allowed, p_BHRC, 0.0)  # mask_0 after the post conv
    # A v: b h r c, b c k d -> b r h d
    return weight_values(a_BHRC, v_BCKD.astype(jnp.float32))


def _exp_tile(plan: _Plan, kernels, q_BRHD, k_BCKD, m_BHR, row0, col0, segs):
    """exp(x - m) of a pre tile with x = mask_-inf(y): [B, H, block_q, block_k] float32.

    q: [B, block_q + c_q - 1, H, D]; k: [B, block_k + c_k - 1, K, D]; m: [B, H, block_q].
    """
    y_BHRC, allowed = _pre_tile(plan, kernels, q_BRHD, k_BCKD, row0, col0, *segs)
    return jnp.exp(jnp.where(allowed, y_BHRC - m_BHR[..., None], -jnp.inf))


# --- slicing helpers -------------------------------------------------------------------------


def _slice(x, start, size: int, axis: int):
    return lax.dynamic_slice_in_dim(x, start, size, axis)


def _add_at(buf, start, update, axis: int):
    """buf[..., start : start + n, ...] += update along axis (n = update.shape[axis])."""
    current = lax.dynamic_slice_in_dim(buf, start, update.shape[axis], axis)
    return lax.dynamic_update_slice_in_dim(buf, current + update.astype(buf.dtype), start, axis)


def _pad_axis(x, axis: int, before: int, after: int, value=0):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return jnp.pad(x, widths, constant_values=value)


def _padded(plan: _Plan, q, k, v, segment_ids):
    """Inputs padded so every tile slice is in range.

    q rows: rows_above zeros on top, then up to num_qb * block_q: padded row i + rows_above is
    query i. k, v columns: cols_side on the left, up to num_kb * block_k + cols_side: padded
    column j + cols_side is key j. Ids pad with -1 (padding is masked by position anyway).
    """
    q_tail = plan.num_qb * plan.block_q - plan.num_t
    k_tail = plan.num_kb * plan.block_k - plan.num_s + plan.cols_side
    q_pad = _pad_axis(q, 1, plan.rows_above, q_tail)
    k_pad = _pad_axis(k, 1, plan.cols_side, k_tail)
    v_pad = _pad_axis(v, 1, plan.cols_side, k_tail)
    if segment_ids is None:
        return q_pad, k_pad, v_pad, None, None
    seg_q = _pad_axis(segment_ids, 1, plan.rows_above, q_tail, -1)
    seg_k = _pad_axis(segment_ids, 1, plan.cols_side, k_tail, -1)
    return q_pad, k_pad, v_pad, seg_q, seg_k


def _seg_slice(seg, start, size: int):
    return None if seg is None else _slice(seg, start, size, 1)


class _Blocks:
    """Tile slices of the padded inputs for query block qb and key block kb (both traced)."""

    def __init__(self, plan: _Plan, padded):
        self.plan = plan
        self.q_pad, self.k_pad, self.v_pad, self.seg_q, self.seg_k = padded

    def out_tile_args(self, qb, kb):
        """q, k, v, (seg rows, seg cols), row0, col0 of the output tile (qb, kb)."""
        p = self.plan
        i0, j0 = qb * p.block_q, kb * p.block_k
        rows, cols = p.block_q + p.rows_above, p.block_k + 2 * p.cols_side
        q = _slice(self.q_pad, i0, rows, 1)
        k = _slice(self.k_pad, j0, cols, 1)
        v = _slice(self.v_pad, j0 + p.cols_side, p.block_k, 1)
        segs = (_seg_slice(self.seg_q, i0, rows), _seg_slice(self.seg_k, j0, cols))
        return q, k, v, segs, i0 - p.rows_above, j0 - p.cols_side

    def pre_tile_args(self, qb, kb):
        """q, k, (seg rows, seg cols), row0, col0 of the pre tile (qb, kb) (its own halo only)."""
        p = self.plan
        i0, j0 = qb * p.block_q, kb * p.block_k
        rows, cols = p.block_q + p.pre_cq - 1, p.block_k + 2 * p.pre_r
        q_start, k_start = i0 + p.post_cq - 1, j0 + p.post_r
        q = _slice(self.q_pad, q_start, rows, 1)
        k = _slice(self.k_pad, k_start, cols, 1)
        segs = (_seg_slice(self.seg_q, q_start, rows), _seg_slice(self.seg_k, k_start, cols))
        return q, k, segs, i0 - (p.pre_cq - 1), j0 - p.pre_r


# --- forward ---------------------------------------------------------------------------------


def _row_stats(plan: _Plan, kernels, blocks: _Blocks):
    """Pass 1: row max m and sum l of exp(x - m) for every query: [B, H, num_qb * block_q] each.

    Rows without an allowed key (padding) get m = 0, l = 1.
    """

    def block_stats(qb):
        def step(kb, carry):  # online max / sum over key blocks
            m_BHR, l_BHR = carry
            q, k, segs, row0, col0 = blocks.pre_tile_args(qb, kb)
            y_BHRC, allowed = _pre_tile(plan, kernels, q, k, row0, col0, *segs)
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


def _stats_padded(plan: _Plan, m_BHT, l_BHT):
    """Stats with c_q' - 1 rows on top (m = 0, l = 1): padded row i + c_q' - 1 is query i."""
    top = plan.post_cq - 1
    return _pad_axis(m_BHT, 2, top, 0, 0.0), _pad_axis(l_BHT, 2, top, 0, 1.0)


def _forward(plan: _Plan, q, k, v, kernels, segment_ids):
    """Both passes: -> out [B, T, H, D] (v's dtype), padded stats (m, l) [B, H, c_q'-1 + T_pad]."""
    blocks = _Blocks(plan, _padded(plan, q, k, v, segment_ids))
    m_BHT, l_BHT = _stats_padded(plan, *_row_stats(plan, kernels, blocks))
    rows = plan.block_q + plan.post_cq - 1

    def block_out(qb):
        m_BHR = _slice(m_BHT, qb * plan.block_q, rows, 2)
        l_BHR = _slice(l_BHT, qb * plan.block_q, rows, 2)

        def step(kb, acc_BRHD):
            q_t, k_t, v_t, segs, row0, col0 = blocks.out_tile_args(qb, kb)
            tile = _out_tile(plan, kernels, q_t, k_t, v_t, m_BHR, l_BHR, row0, col0, segs)
            return acc_BRHD + tile

        acc = jnp.zeros((q.shape[0], plan.block_q, q.shape[2], q.shape[3]), jnp.float32)
        return lax.fori_loop(0, plan.key_blocks(qb), step, acc)

    out_NBRHD = lax.map(block_out, jnp.arange(plan.num_qb))
    out_BTHD = rearrange(out_NBRHD, "n b r h d -> b (n r) h d")[:, : plan.num_t]
    return out_BTHD.astype(v.dtype), (m_BHT, l_BHT)


# --- custom VJP ------------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(plan: _Plan, q, k, v, kernels, segment_ids):
    return _forward(plan, q, k, v, kernels, segment_ids)[0]


def _attend_fwd(plan: _Plan, q, k, v, kernels, segment_ids):
    out, stats = _forward(plan, q, k, v, kernels, segment_ids)
    return out, (q, k, v, kernels, segment_ids, stats)


class _Grads(NamedTuple):
    """Backward accumulators (float32): dq, dk, dv in the padded layouts of _padded, d kernels,
    and dl, the gradient w.r.t. the row sums l, laid out like the padded stats."""

    dq: jax.Array
    dk: jax.Array
    dv: jax.Array
    d_kernels: dict
    dl: jax.Array


def _attend_bwd(plan: _Plan, residuals, d_out_BTHD):
    """Gradients w.r.t. q, k, v and the kernels, recomputing tiles; None for segment_ids."""
    q, k, v, kernels, segment_ids, (m_BHT, l_BHT) = residuals
    padded = _padded(plan, q, k, v, segment_ids)
    blocks = _Blocks(plan, padded)
    zeros = partial(jax.tree.map, lambda x: jnp.zeros(x.shape, jnp.float32))
    grads = _Grads(*zeros((padded[0], padded[1], padded[2], kernels, l_BHT)))
    # d out: b t h d -> b (n r) h d, zero rows below T
    d_out = _pad_axis(d_out_BTHD.astype(jnp.float32), 1, 0, plan.num_qb * plan.block_q - plan.num_t)
    step = partial(_backward_block, plan, kernels, blocks, d_out, m_BHT, l_BHT)
    grads = lax.fori_loop(0, plan.num_qb, lambda it, g: step(plan.num_qb - 1 - it, g), grads)
    dq = grads.dq[:, plan.rows_above : plan.rows_above + plan.num_t].astype(q.dtype)
    dk = grads.dk[:, plan.cols_side : plan.cols_side + plan.num_s].astype(k.dtype)
    dv = grads.dv[:, plan.cols_side : plan.cols_side + plan.num_s].astype(v.dtype)
    d_kernels = jax.tree.map(lambda g, x: g.astype(x.dtype), grads.d_kernels, kernels)
    return dq, dk, dv, d_kernels, None


def _backward_block(plan: _Plan, kernels, blocks, d_out, m_BHT, l_BHT, qb, grads: _Grads):
    """Adds query block qb's gradients; the blocks after qb must have been done already.

    First the output tiles (q, k, v, kernels, and dl of the block's rows and halo rows), then,
    with dl of the block's own rows complete, the gradient through those rows' sums l.
    """
    rows = plan.block_q + plan.post_cq - 1
    i0 = qb * plan.block_q
    m_BHR, l_BHR = _slice(m_BHT, i0, rows, 2), _slice(l_BHT, i0, rows, 2)
    d_out_BRHD = _slice(d_out, i0, plan.block_q, 1)
    out_step = partial(_out_tile_grads, plan, kernels, blocks, d_out_BRHD, m_BHR, l_BHR, qb)
    grads = lax.fori_loop(0, plan.key_blocks(qb), out_step, grads)
    own = plan.post_cq - 1  # the block's own rows in the [B, H, rows] stats slices
    dl_BHR = _slice(grads.dl, i0 + own, plan.block_q, 2)
    stats_step = partial(_row_sum_grads, plan, kernels, blocks, dl_BHR, m_BHR[..., own:], qb)
    return lax.fori_loop(0, plan.key_blocks(qb), stats_step, grads)


def _out_tile_grads(plan, kernels, blocks, d_out_BRHD, m_BHR, l_BHR, qb, kb, grads: _Grads):
    """VJP of output tile (qb, kb) w.r.t. q, k, v, kernels and l (m held constant)."""
    q_t, k_t, v_t, segs, row0, col0 = blocks.out_tile_args(qb, kb)

    def tile(q_t, k_t, v_t, kern, l_BHR):
        return _out_tile(plan, kern, q_t, k_t, v_t, m_BHR, l_BHR, row0, col0, segs)

    _, vjp = jax.vjp(tile, q_t, k_t, v_t, kernels, l_BHR)
    g_q, g_k, g_v, g_kern, g_l = vjp(d_out_BRHD)
    i0, j0 = qb * plan.block_q, kb * plan.block_k
    return _Grads(
        _add_at(grads.dq, i0, g_q, 1),
        _add_at(grads.dk, j0, g_k, 1),
        _add_at(grads.dv, j0 + plan.cols_side, g_v, 1),
        _add_tree(grads.d_kernels, g_kern),
        _add_at(grads.dl, i0, g_l, 2),
    )


def _row_sum_grads(plan, kernels, blocks, dl_BHR, m_BHR, qb, kb, grads: _Grads):
    """Gradient through the row sums l_i = sum_j exp(x_ij - m_i) of block qb over key block kb:
    the VJP of sum_ij dl_i exp(x_ij - m_i) w.r.t. q, k and the pre kernels."""
    q_t, k_t, segs, row0, col0 = blocks.pre_tile_args(qb, kb)

    def total(q_t, k_t, kern):
        e_BHRC = _exp_tile(plan, kern, q_t, k_t, m_BHR, row0, col0, segs)
        return jnp.sum(dl_BHR[..., None] * e_BHRC)

    _, vjp = jax.vjp(total, q_t, k_t, kernels)
    g_q, g_k, g_kern = vjp(jnp.ones((), jnp.float32))
    i0, j0 = qb * plan.block_q, kb * plan.block_k
    return grads._replace(
        dq=_add_at(grads.dq, i0 + plan.post_cq - 1, g_q, 1),
        dk=_add_at(grads.dk, j0 + plan.post_r, g_k, 1),
        d_kernels=_add_tree(grads.d_kernels, g_kern),
    )


def _add_tree(acc, update):
    return jax.tree.map(lambda a, b: a + b.astype(a.dtype), acc, update)


_attend.defvjp(_attend_fwd, _attend_bwd)

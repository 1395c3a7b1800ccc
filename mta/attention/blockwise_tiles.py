"""The tiles of blockwise MTA (blockwise.py): their geometry, the pre-softmax and output tiles
with their halos, and the padded inputs they are sliced from."""

from dataclasses import dataclass

import jax.numpy as jnp
from einops import rearrange
from jax import lax

from mta.attention.conv import grouped_conv_valid, mix_heads
from mta.attention.core import attention_logits, weight_values
from mta.attention.kernels import KernelSpec


@dataclass(frozen=True)
class Plan:
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


def allowed_pairs(plan: Plan, rows_R, cols_C, seg_BR, seg_BC):
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


def conv_valid(x_BCRS, kernel_OIQK, groups: int, seg_BR, tuned: bool):
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


def pre_tile(plan: Plan, kernels, q_BRHD, k_BCKD, row0, col0, seg_BR, seg_BC):
    """Pre-softmax logits of a tile, before the -inf mask.

    q: [B, R + c_q - 1, H, D], queries row0 .. (global, may start above 0);
    k: [B, C + c_k - 1, K, D], keys col0 ..; seg_BR / seg_BC their document ids or None.
    -> y [B, H, R, C] float32 for queries row0 + c_q - 1 .., keys col0 + r ..; allowed [B|1,1,R,C].
    """
    rows_R = row0 + jnp.arange(q_BRHD.shape[1])
    cols_C = col0 + jnp.arange(k_BCKD.shape[1])
    allowed = allowed_pairs(plan, rows_R, cols_C, seg_BR, seg_BC)
    # logits, mask_0: b r h d, b c k d -> b h r c
    x_BHRC = jnp.where(allowed, attention_logits(q_BRHD, k_BCKD), 0.0)
    head_pre = kernels.get("head_pre")
    if "kq_pre" in kernels:  # depthwise: h q k -> h 1 q k
        kernel_OIQK = rearrange(kernels["kq_pre"], "h q k -> h 1 q k").astype(jnp.float32)
        x_BHRC = conv_valid(x_BHRC, kernel_OIQK, x_BHRC.shape[1], seg_BR, plan.tuned)
    elif head_pre is not None and head_pre.ndim == 5:  # 3-D conv: n i o q k -> (n o) i q k
        kernel_OIQK = rearrange(head_pre, "n i o q k -> (n o) i q k").astype(jnp.float32)
        x_BHRC = conv_valid(x_BHRC, kernel_OIQK, head_pre.shape[0], seg_BR, plan.tuned)
    if head_pre is not None and head_pre.ndim in (2, 3):  # b h r c, (h h | n i o) -> b h r c
        x_BHRC = mix_heads(x_BHRC, head_pre, plan.tuned)
    allowed = allowed[..., plan.pre_cq - 1 :, plan.pre_r : allowed.shape[-1] - plan.pre_r]
    return x_BHRC, allowed


def out_tile(plan: Plan, kernels, q_BRHD, k_BCKD, v_BCKD, m_BHR, l_BHR, row0, col0, segs):
    """One output tile: queries row0 + rows_above .. (block_q of them), keys col0 + cols_side ...

    q: [B, block_q + rows_above, H, D]; k: [B, block_k + 2 cols_side, K, D]; v: [B, block_k, K, D];
    m, l: [B, H, block_q + c_q' - 1] row max / sum of the probability rows the post conv reads;
    segs: (seg_BR, seg_BC) of q's rows and k's columns, or (None, None).
    -> A[rows, cols] @ v[cols]: [B, block_q, H, D] float32.
    """
    seg_BR, seg_BC = segs
    y_BHRC, allowed = pre_tile(plan, kernels, q_BRHD, k_BCKD, row0, col0, seg_BR, seg_BC)
    # softmax with known statistics: exp(y - m) / l, exactly 0 where masked
    p_BHRC = jnp.exp(jnp.where(allowed, y_BHRC - m_BHR[..., None], -jnp.inf)) / l_BHR[..., None]
    if "kq_post" in kernels:  # post conv on the probabilities (rows of this block only)
        kernel_OIQK = rearrange(kernels["kq_post"], "h q k -> h 1 q k").astype(jnp.float32)
        seg_post = None if seg_BR is None else seg_BR[:, plan.pre_cq - 1 :]
        p_BHRC = conv_valid(p_BHRC, kernel_OIQK, p_BHRC.shape[1], seg_post, plan.tuned)
    if "head_post" in kernels:  # b (n i) r c, n i o -> b (n o) r c
        p_BHRC = mix_heads(p_BHRC, kernels["head_post"], plan.tuned)
    r = plan.post_r
    allowed = allowed[..., plan.post_cq - 1 :, r : allowed.shape[-1] - r]
    a_BHRC = jnp.where(allowed, p_BHRC, 0.0)  # mask_0 after the post conv
    # A v: b h r c, b c k d -> b r h d
    return weight_values(a_BHRC, v_BCKD.astype(jnp.float32))


def exp_tile(plan: Plan, kernels, q_BRHD, k_BCKD, m_BHR, row0, col0, segs):
    """exp(x - m) of a pre tile with x = mask_-inf(y): [B, H, block_q, block_k] float32.

    q: [B, block_q + c_q - 1, H, D]; k: [B, block_k + c_k - 1, K, D]; m: [B, H, block_q].
    """
    y_BHRC, allowed = pre_tile(plan, kernels, q_BRHD, k_BCKD, row0, col0, *segs)
    return jnp.exp(jnp.where(allowed, y_BHRC - m_BHR[..., None], -jnp.inf))


# --- slicing helpers -------------------------------------------------------------------------


def dynamic_slice(x, start, size: int, axis: int):
    return lax.dynamic_slice_in_dim(x, start, size, axis)


def add_at(buf, start, update, axis: int):
    """buf[..., start : start + n, ...] += update along axis (n = update.shape[axis])."""
    current = lax.dynamic_slice_in_dim(buf, start, update.shape[axis], axis)
    return lax.dynamic_update_slice_in_dim(buf, current + update.astype(buf.dtype), start, axis)


def pad_axis(x, axis: int, before: int, after: int, value=0):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return jnp.pad(x, widths, constant_values=value)


def padded_inputs(plan: Plan, q, k, v, segment_ids):
    """Inputs padded so every tile slice is in range.

    q rows: rows_above zeros on top, then up to num_qb * block_q: padded row i + rows_above is
    query i. k, v columns: cols_side on the left, up to num_kb * block_k + cols_side: padded
    column j + cols_side is key j. Ids pad with -1 (padding is masked by position anyway).
    """
    q_tail = plan.num_qb * plan.block_q - plan.num_t
    k_tail = plan.num_kb * plan.block_k - plan.num_s + plan.cols_side
    q_pad = pad_axis(q, 1, plan.rows_above, q_tail)
    k_pad = pad_axis(k, 1, plan.cols_side, k_tail)
    v_pad = pad_axis(v, 1, plan.cols_side, k_tail)
    if segment_ids is None:
        return q_pad, k_pad, v_pad, None, None
    seg_q = pad_axis(segment_ids, 1, plan.rows_above, q_tail, -1)
    seg_k = pad_axis(segment_ids, 1, plan.cols_side, k_tail, -1)
    return q_pad, k_pad, v_pad, seg_q, seg_k


def _seg_slice(seg, start, size: int):
    return None if seg is None else dynamic_slice(seg, start, size, 1)


class Blocks:
    """Tile slices of the padded inputs for query block qb and key block kb (both traced)."""

    def __init__(self, plan: Plan, padded):
        self.plan = plan
        self.q_pad, self.k_pad, self.v_pad, self.seg_q, self.seg_k = padded

    def out_tile_args(self, qb, kb):
        """q, k, v, (seg rows, seg cols), row0, col0 of the output tile (qb, kb)."""
        p = self.plan
        i0, j0 = qb * p.block_q, kb * p.block_k
        rows, cols = p.block_q + p.rows_above, p.block_k + 2 * p.cols_side
        q = dynamic_slice(self.q_pad, i0, rows, 1)
        k = dynamic_slice(self.k_pad, j0, cols, 1)
        v = dynamic_slice(self.v_pad, j0 + p.cols_side, p.block_k, 1)
        segs = (_seg_slice(self.seg_q, i0, rows), _seg_slice(self.seg_k, j0, cols))
        return q, k, v, segs, i0 - p.rows_above, j0 - p.cols_side

    def pre_tile_args(self, qb, kb):
        """q, k, (seg rows, seg cols), row0, col0 of the pre tile (qb, kb) (its own halo only)."""
        p = self.plan
        i0, j0 = qb * p.block_q, kb * p.block_k
        rows, cols = p.block_q + p.pre_cq - 1, p.block_k + 2 * p.pre_r
        q_start, k_start = i0 + p.post_cq - 1, j0 + p.post_r
        q = dynamic_slice(self.q_pad, q_start, rows, 1)
        k = dynamic_slice(self.k_pad, k_start, cols, 1)
        segs = (_seg_slice(self.seg_q, q_start, rows), _seg_slice(self.seg_k, k_start, cols))
        return q, k, segs, i0 - (p.pre_cq - 1), j0 - p.pre_r

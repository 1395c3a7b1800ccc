"""The tile math of blockwise MTA (blockwise.py): pre-softmax logit tiles (the widened q.k
matmul of pre_conv.py off the causal band, convolved zero-masked logits on it) and the
post-softmax part of an output tile.

TILE_COUNTER counts executed pre-softmax logit tile computations ("count": pre_tile calls and
the VJPs that recompute the logits, i.e. those on the band; "wide": pre_tile calls through the
widened matmul) when its "enabled" is set before tracing; the tests use it to check the counts
stated in blockwise.py.
"""

from functools import partial

import jax
import jax.numpy as jnp
from einops import rearrange
from jax import lax

from mta.attention.blockwise_plan import Plan, allowed_pairs
from mta.attention.conv import grouped_conv_valid, mix_heads
from mta.attention.core import attention_logits, weight_values
from mta.attention.depthwise import depthwise_conv_flat, flat_sum

TILE_COUNTER = {"enabled": False, "count": 0, "wide": 0}


def _count_tile(key: str = "count"):
    TILE_COUNTER[key] += 1


def conv_wide(x_BHRC, kernel_HQK, seg_BR, tuned: bool):
    """Depthwise MTA conv of a tile with its halo, kept as wide as its input:
    x [B, H, R + c_q - 1, C] -> [B, H, R, C] float32, where output column j < C - c_k + 1 is
    sum_{a, b} kernel[h, a, b] x[h, t + a, j + b] (output row t; its own row is input row
    t + c_q - 1) and later columns are unspecified.

    The rows are laid end to end (depthwise.depthwise_conv_flat): a 2-D conv whose output a
    head-mixing dot or the [R, C] view reads ran 5-10x slower on XLA:CPU (the reshape fused
    into its loop). With seg_BR (ids of the input rows) a tap reads 0 from a row of another
    document than the output row's: one flat conv per query tap on rows with foreign rows zeroed.
    """
    c_q = kernel_HQK.shape[1]
    num_rows = x_BHRC.shape[2] - (c_q - 1)
    x_BHRC = lax.optimization_barrier(x_BHRC.astype(jnp.float32))  # not re-evaluated per tap
    kernel_HQK = kernel_HQK.astype(jnp.float32)
    if seg_BR is None or c_q == 1:
        return _conv_flat(x_BHRC, kernel_HQK, tuned)
    out = 0.0
    for a in range(c_q):  # rows t + a of output row t, kept if in its document
        same_doc_BR = seg_BR[:, a : a + num_rows] == seg_BR[:, c_q - 1 :]
        rows_BHRC = jnp.where(same_doc_BR[:, None, :, None], x_BHRC[:, :, a : a + num_rows], 0.0)
        out = out + _conv_flat(rows_BHRC, kernel_HQK[:, a : a + 1], tuned)
    return out


def _conv_flat(x_BHRC, kernel_HQK, tuned: bool):
    batch, heads, rows_in, cols = x_BHRC.shape
    c_q, c_k = kernel_HQK.shape[1:]
    num_rows = rows_in - (c_q - 1)
    flat_BHL = jnp.pad(x_BHRC.reshape(batch, heads, -1), ((0, 0), (0, 0), (0, c_k - 1)))
    flat_BHL = lax.optimization_barrier(flat_BHL)  # (and its cotangent, in the backward)
    if tuned:
        out_BHL = depthwise_conv_flat(flat_BHL, kernel_HQK, cols, num_rows * cols)
    else:
        out_BHL = flat_sum(flat_BHL, kernel_HQK, cols, num_rows * cols)
    # the flat loop is not fused into a consumer that reads it as [R, C] (div/mod per element)
    out_BHL = lax.optimization_barrier(out_BHL)
    return out_BHL.reshape(batch, heads, num_rows, cols)


def pre_tile(plan: Plan, kernels, q_BRHD, k_BCKD, row0, col0, seg_BR, seg_BC):
    """Pre-softmax logits of a tile, before the -inf mask.

    q: [B, R + c_q - 1, H, D], global queries row0 ..; k: [B, C + c_k - 1, K, D], keys col0 ..;
    seg_BR / seg_BC their document ids or None. kernels: kq_pre / head_pre (others ignored).
    -> y [B, H, R, C] float32 for queries row0 + c_q - 1 .., keys col0 + r ..;
       allowed [B|1, 1, R, C] (y is unspecified where not allowed);
       f [B, H, R, C]: y before the head mixing (y itself without mixing).
    """
    if TILE_COUNTER["enabled"]:
        jax.debug.callback(_count_tile)
    return _pre_tile(plan, kernels, q_BRHD, k_BCKD, row0, col0, seg_BR, seg_BC)


def _pre_tile(plan: Plan, kernels, q_BRHD, k_BCKD, row0, col0, seg_BR, seg_BC):
    rows_R = row0 + jnp.arange(q_BRHD.shape[1])
    cols_C = col0 + jnp.arange(k_BCKD.shape[1])
    allowed_in = allowed_pairs(plan, rows_R, cols_C, seg_BR, seg_BC)
    r = plan.pre_r
    allowed = allowed_in[..., plan.pre_cq - 1 :, r : allowed_in.shape[-1] - r]
    head_pre = kernels.get("head_pre")
    if not plan.spec.pre_conv:  # nothing reads a neighbour: the mask comes after
        y_BHRC = attention_logits(q_BRHD, k_BCKD)
    elif plan.spec.head_pre == "conv3d":
        y_BHRC = _exact_logits(plan, head_pre, q_BRHD, k_BCKD, allowed_in, seg_BR)
    else:
        clean = _off_band(plan, row0, col0, k_BCKD.shape[1], seg_BR, seg_BC)
        args = (kernels["kq_pre"], q_BRHD, k_BCKD, allowed_in, seg_BR)
        y_BHRC = lax.cond(clean, partial(_wide_logits, plan), partial(_exact_logits, plan), *args)
    f_BHRC = y_BHRC
    if head_pre is not None and head_pre.ndim in (2, 3):  # b h r c, (h h | n i o) -> b h r c
        y_BHRC = mix_heads(f_BHRC, head_pre, plan.tuned)
    return y_BHRC, allowed, f_BHRC


def _off_band(plan: Plan, row0, col0, num_cols: int, seg_BR, seg_BC):
    """True when no output of the tile reads a zero-masked logit: every output is at least
    plan.band diagonals below the causal boundary and (with documents) every query row and
    key column the tile reads is in one document, in every batch row."""
    first_row = row0 + plan.pre_cq - 1
    last_col = col0 + num_cols - 1 - plan.pre_r
    clean = first_row + plan.num_s - plan.num_t - last_col >= plan.band
    if seg_BR is not None:
        doc_B1 = seg_BR[:, -1:]
        clean = clean & jnp.all(seg_BR == doc_B1) & jnp.all(seg_BC == doc_B1)
    return clean


def _wide_logits(plan: Plan, theta_HQK, q_BRHD, k_BCKD, allowed_in, seg_BR):
    """conv_pre(q k^T / sqrt(D)) as ONE matmul over a widened head dim (pre_conv.py): exact
    where no tap reads a masked logit (the caller checks that). -> [B, H, R, C] float32."""
    del allowed_in, seg_BR  # the same operands as _exact_logits (lax.cond)
    if TILE_COUNTER["enabled"]:
        jax.debug.callback(partial(_count_tile, "wide"))
    wide_q, wide_k = _wide_operands(q_BRHD, k_BCKD, theta_HQK)
    # b h r (n d), b h c (n d) -> b h r c
    return jnp.einsum("bhrd,bhcd->bhrc", wide_q, wide_k, preferred_element_type=jnp.float32)


def _wide_operands(q_BRHD, k_BCKD, theta_HQK):
    """(wide_q [B, H, R, n D], wide_k [B, H, C, n D]), n = min(c_q, c_k), with
    wide_q wide_k^T = sum_{a,b} theta[a, b] q_taps[a] k_taps[b]^T (pre_conv.py's identity,
    unmasked): the plain taps of the shorter kernel side, the other side's taps weighted.
    Head major: in pre_conv's [B, R, H, n D] layout XLA:CPU copied them into this one several
    times per tile in the backward."""
    c_q, c_k = theta_HQK.shape[1:]
    num_rows, num_cols = q_BRHD.shape[1] - c_q + 1, k_BCKD.shape[1] - c_k + 1
    group = q_BRHD.shape[2] // k_BCKD.shape[2]
    # b r h d -> b h r d (small: one tile's rows)
    q = jnp.swapaxes(q_BRHD.astype(jnp.float32) * q_BRHD.shape[-1] ** -0.5, 1, 2)
    k = jnp.swapaxes(jnp.repeat(k_BCKD.astype(jnp.float32), group, axis=2), 1, 2)
    q_taps = [q[:, :, a : a + num_rows, None] for a in range(c_q)]  # b h r 1 d
    k_taps = [k[:, :, b : b + num_cols, None] for b in range(c_k)]
    theta = theta_HQK.astype(jnp.float32)
    if c_q <= c_k:
        wide_q = q_taps
        wide_k = [
            sum(theta[None, :, a, b, None, None, None] * k_taps[b] for b in range(c_k))
            for a in range(c_q)
        ]
    else:
        wide_q = [
            sum(theta[None, :, a, b, None, None, None] * q_taps[a] for a in range(c_q))
            for b in range(c_k)
        ]
        wide_k = k_taps
    return tuple(
        jnp.concatenate(w, axis=3).reshape(w[0].shape[:3] + (-1,)) for w in (wide_q, wide_k)
    )


def pre_tile_grads(
    plan: Plan, kernels, q_BRHD, k_BCKD, row0, col0, seg_BR, seg_BC, dy_BHRC, f_BHRC
):
    """The VJP of pre_tile (same arguments; kernels: kq_pre / head_pre only) at dy [B, H, R, C]
    -> (dq, dk, d kernels); f [B, H, R, C]: pre_tile's unmixed logits of the tile. Off the band
    the widened matmul's VJP is written out (with the operands in head-major order; autodiff of
    the tile ran ~4x slower on XLA:CPU) and computes no logits: the mixing's weight gradient
    reads f. On the band, autodiff computes the tile again."""

    def autodiff(q_t, k_t, kern, dy_BHRC, f_BHRC):
        del f_BHRC
        if TILE_COUNTER["enabled"]:
            jax.debug.callback(_count_tile)

        def tile(q_t, k_t, kern):
            y_BHRC, allowed, _ = _pre_tile(plan, kern, q_t, k_t, row0, col0, seg_BR, seg_BC)
            return y_BHRC, allowed

        _, vjp, _ = jax.vjp(tile, q_t, k_t, kern, has_aux=True)
        return vjp(dy_BHRC)

    args = (q_BRHD, k_BCKD, kernels, dy_BHRC, f_BHRC)
    if not plan.spec.pre_conv:
        return _plain_grads(plan, *args)
    if plan.spec.head_pre == "conv3d":
        return autodiff(*args)
    clean = _off_band(plan, row0, col0, k_BCKD.shape[1], seg_BR, seg_BC)
    return lax.cond(clean, partial(_wide_grads, plan), autodiff, *args)


def _plain_grads(plan: Plan, q_BRHD, k_BCKD, kernels, dy_BHRC, f_BHRC):
    """The VJP of a tile without pre conv: the logits' VJP reads only q and k."""
    grads, d_f_BHRC = _mixing_grads(plan, kernels, dy_BHRC, f_BHRC)
    _, logits_vjp = jax.vjp(attention_logits, q_BRHD, k_BCKD)
    d_q, d_k = logits_vjp(d_f_BHRC)
    return d_q, d_k, grads


def _mixing_grads(plan: Plan, kernels, dy_BHRC, f_BHRC):
    """({"head_pre": d kernel} or {}, d f) for y = mix_pre(f) (y = f without mixing)."""
    if plan.spec.head_pre not in ("linear", "grouped"):
        return {}, dy_BHRC
    _, mix_vjp = jax.vjp(partial(mix_heads, tuned=plan.tuned), f_BHRC, kernels["head_pre"])
    d_f_BHRC, d_kernel = mix_vjp(dy_BHRC)
    return {"head_pre": d_kernel}, d_f_BHRC


def _wide_grads(plan: Plan, q_BRHD, k_BCKD, kernels, dy_BHRC, f_BHRC):
    (wide_q, wide_k), operands_vjp = jax.vjp(_wide_operands, q_BRHD, k_BCKD, kernels["kq_pre"])
    grads, d_f_BHRC = _mixing_grads(plan, kernels, dy_BHRC, f_BHRC)
    d_wide_q = jnp.einsum("bhrc,bhcd->bhrd", d_f_BHRC, wide_k)
    d_wide_k = jnp.einsum("bhrc,bhrd->bhcd", d_f_BHRC, wide_q)
    d_q, d_k, grads["kq_pre"] = operands_vjp((d_wide_q, d_wide_k))
    return d_q, d_k, grads


def _exact_logits(plan: Plan, kernel, q_BRHD, k_BCKD, allowed_in, seg_BR):
    """conv_pre(mask_0(q k^T / sqrt(D))) by convolving the zero-masked logit tile: exact on
    the causal band and across documents. kernel: kq_pre [H, c_q, c_k] or a 3-D head_pre."""
    x_BHRC = jnp.where(allowed_in, attention_logits(q_BRHD, k_BCKD), 0.0)
    num_cols = x_BHRC.shape[3] - kernel.shape[-1] + 1
    if kernel.ndim == 3:  # depthwise
        return conv_wide(x_BHRC, kernel, seg_BR, plan.tuned)[..., :num_cols]
    kernel_OIQK = rearrange(kernel, "n i o q k -> (n o) i q k").astype(jnp.float32)
    x_BHRC = lax.optimization_barrier(x_BHRC)  # not re-evaluated per tap
    return _conv3d_valid(x_BHRC, kernel_OIQK, kernel.shape[0], seg_BR, plan.tuned)


def _conv3d_valid(x_BCRS, kernel_OIQK, groups: int, seg_BR, tuned: bool):
    """The 3-D pre conv without padding (lax's grouped conv): x [B, C, R + c_q - 1, S + c_k - 1]
    -> [B, O, R, S]; with seg_BR a query tap reads 0 from a row of another document."""
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


def probabilities(y_BHRC, allowed, m_BHR, l_BHR):
    """softmax with known row statistics: exp(y - m) / l, exactly 0 where not allowed."""
    return jnp.exp(jnp.where(allowed, y_BHRC - m_BHR[..., None], -jnp.inf)) / l_BHR[..., None]


def out_tile(plan: Plan, kernels, p_BHRC, allowed_out, seg_rows, v_BCKD):
    """An output tile from probabilities with the post halo, kept C = block_k + 2 r' wide.

    p: [B, H, block_q + c_q' - 1, C] (rows from c_q' - 1 above the block, columns from r' left
    of it); allowed_out: [B|1, 1, block_q, C], output column j is key j0 + j (False from
    block_k on); seg_rows: ids of p's rows or None; v: [B, C, K, D], keys j0 ...
    -> mask_0(mix_post(conv_post(p))) v: [B, block_q, H, D] float32.
    """
    if "kq_post" in kernels:  # post conv on the probabilities (rows of this strip only)
        p_BHRC = conv_wide(p_BHRC, kernels["kq_post"], seg_rows, plan.tuned)
    if "head_post" in kernels:  # b (n i) r c, n i o -> b (n o) r c
        p_BHRC = mix_heads(p_BHRC, kernels["head_post"], plan.tuned)
    a_BHRC = jnp.where(allowed_out, p_BHRC, 0.0)  # mask_0 after the post conv
    # A v: b h r c, b c k d -> b r h d
    return weight_values(a_BHRC, v_BCKD.astype(jnp.float32))

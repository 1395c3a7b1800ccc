"""The backward of blockwise MTA (blockwise.py's custom VJP): gradients w.r.t. q, k, v and the
kernels in O(T) memory, query blocks last to first, one row strip at a time."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mta.attention.blockwise_plan import (
    Blocks,
    Plan,
    add_at,
    allowed_pairs,
    dynamic_slice,
    pad_axis,
    padded_inputs,
)
from mta.attention.blockwise_strip import empty_strip, logit_strip, strip_probs
from mta.attention.blockwise_tiles import out_tile, pre_tile_grads, probabilities

PRE, POST = ("kq_pre", "head_pre"), ("kq_post", "head_post")


class _Grads(NamedTuple):
    """Accumulators (float32): dq, dk, dv in the layouts of padded_inputs, d kernels (pre and
    post), and the dP rows of the next block up that the last block added (carry)."""

    dq: jax.Array
    dk: jax.Array
    dv: jax.Array
    d_pre: dict
    d_post: dict
    dp_carry: jax.Array


def backward(plan: Plan, residuals, d_out_BTHD):
    """Gradients w.r.t. q, k, v and the kernels; None for segment_ids."""
    q, k, v, kernels, segment_ids, (m_all, l_all) = residuals
    inputs = padded_inputs(plan, q, k, v, segment_ids)
    blocks = Blocks(plan, inputs)
    pre = {name: kernels[name] for name in PRE if name in kernels}
    post = {name: kernels[name] for name in POST if name in kernels}
    zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), tree)  # noqa: E731
    batch, heads = q.shape[0], q.shape[2]
    carry = empty_strip(plan, batch, heads, plan.post_cq - 1)
    grads = _Grads(*zeros((inputs[0], inputs[1], inputs[2], pre, post)), carry)
    # d out: b t h d -> b (n r) h d, zero rows below T
    d_out = pad_axis(d_out_BTHD.astype(jnp.float32), 1, 0, plan.num_qb * plan.block_q - plan.num_t)

    # the pre tiles' VJP reads the unmixed logits (the mixing's weight gradient) from a strip
    mixing = plan.spec.head_pre in ("linear", "grouped")
    strips = (empty_strip(plan, batch, heads), empty_strip(plan, batch, heads) if mixing else None)

    def block(it, state):
        qb = plan.num_qb - 1 - it
        grads, (strip, unmixed) = state
        strip, _, unmixed = logit_strip(plan, pre, blocks, qb, strip, False, unmixed)
        stats = (m_all[qb], l_all[qb])
        grads = _block_grads(plan, pre, post, blocks, d_out, qb, (strip, unmixed), stats, grads)
        return grads, (strip, unmixed)

    grads, _ = lax.fori_loop(0, plan.num_qb, block, (grads, strips))
    dq = grads.dq[:, plan.rows_above : plan.rows_above + plan.num_t].astype(q.dtype)
    dk = grads.dk[:, plan.cols_side : plan.cols_side + plan.num_s].astype(k.dtype)
    dv = grads.dv[:, plan.cols_side : plan.cols_side + plan.num_s].astype(v.dtype)
    d_kernels = {**grads.d_pre, **grads.d_post}
    d_kernels = {name: d_kernels[name].astype(kernels[name].dtype) for name in kernels}
    return dq, dk, dv, d_kernels, None


def _block_grads(plan: Plan, pre, post, blocks, d_out, qb, strips, stats, grads: _Grads):
    """Adds query block qb's gradients (block qb + 1 done already) from its filled strips
    (the pre tiles, and before the head mixing or None)."""
    strip, unmixed = strips
    m_BHR, l_BHR = stats
    halo, bk = plan.post_cq - 1, plan.block_k
    num_kb = plan.key_blocks(qb)
    d_out_BRHD = dynamic_slice(d_out, qb * plan.block_q, plan.block_q, 1)
    # dP of the strip's rows; its last c_q' - 1 rows start with what block qb + 1 added
    dp = lax.dynamic_update_slice_in_dim(jnp.zeros_like(strip), grads.dp_carry, plan.block_q, 2)

    def out_step(kb, carry):  # VJP of the output tile w.r.t. P (with halo), v, post kernels
        dp, dv, d_post = carry
        p_BHRC, allowed_out, seg_rows, v_t = strip_probs(plan, blocks, qb, kb, strip, m_BHR, l_BHR)

        def tile(p_BHRC, kern, v_t):
            return out_tile(plan, kern, p_BHRC, allowed_out, seg_rows, v_t)

        _, vjp = jax.vjp(tile, p_BHRC, post, v_t)
        g_p, g_kern, g_v = vjp(d_out_BRHD)
        dp = add_at(dp, kb * bk, g_p, 3)
        dv = add_at(dv, kb * bk + plan.cols_side, g_v, 1)
        return dp, dv, _add_tree(d_post, g_kern)

    dp, dv, d_post = lax.fori_loop(0, num_kb, out_step, (dp, grads.dv, grads.d_post))
    own_rows = qb * plan.block_q + jnp.arange(plan.block_q)
    _, seg_own = blocks.strip_ids(qb)
    seg_own = None if seg_own is None else seg_own[:, halo:]
    m_own, l_own = m_BHR[..., halo:], l_BHR[..., halo:]

    def own_window(kb):  # one dynamic slice: a static row slice first copies the whole strip
        return (0, 0, halo, kb * bk + plan.post_r), m_own.shape + (bk,)

    def own_tile(kb):  # P and dP of the block's own rows x key block kb
        cols_C = kb * bk + jnp.arange(bk)
        _, seg_cols, _ = blocks.post_cols(kb)
        seg_cols = None if seg_cols is None else seg_cols[:, plan.post_r : plan.post_r + bk]
        allowed = allowed_pairs(plan, own_rows, cols_C, seg_own, seg_cols)
        y_BHRC = lax.dynamic_slice(strip, *own_window(kb))
        dp_BHRC = lax.dynamic_slice(dp, *own_window(kb))
        return probabilities(y_BHRC, allowed, m_own, l_own), dp_BHRC

    def delta_step(kb, delta_BHR):
        p_BHRC, dp_BHRC = own_tile(kb)
        return delta_BHR + jnp.sum(p_BHRC * dp_BHRC, axis=-1)

    delta_BHR = lax.fori_loop(0, num_kb, delta_step, jnp.zeros_like(m_own))

    def pre_step(kb, carry):  # dY = P (dP - delta), pulled back through the pre tile
        dq, dk, d_pre = carry
        q_t, k_t, segs, row0, col0 = blocks.pre_args(qb, kb, 0)

        p_BHRC, dp_BHRC = own_tile(kb)
        dy_BHRC = p_BHRC * (dp_BHRC - delta_BHR[..., None])
        f_BHRC = None if unmixed is None else lax.dynamic_slice(unmixed, *own_window(kb))
        g_q, g_k, g_kern = pre_tile_grads(plan, pre, q_t, k_t, row0, col0, *segs, dy_BHRC, f_BHRC)
        dq = add_at(dq, qb * plan.block_q + plan.post_cq - 1, g_q, 1)
        dk = add_at(dk, kb * bk + plan.post_r, g_k, 1)
        return dq, dk, _add_tree(d_pre, g_kern)

    dq, dk, d_pre = lax.fori_loop(0, num_kb, pre_step, (grads.dq, grads.dk, grads.d_pre))
    return _Grads(dq, dk, dv, d_pre, d_post, dp[:, :, :halo])


def _add_tree(acc, update):
    return jax.tree.map(lambda a, b: a + b.astype(a.dtype), acc, update)

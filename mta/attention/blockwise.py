"""Multi-Token Attention, blockwise: the contract and results of mta.multi_token_attention in
O(T) memory, forward and backward (impl="blockwise"). See docs/mta.md and reference.py.

    A = mask_0(mix_post(conv_post(softmax(mask_-inf(mix_pre(conv_pre(mask_0(q k^T / sqrt(D))))))))
    out = A v

No T x S matrix is built. Queries are cut into blocks of block_q rows, keys into blocks of
block_k columns (both padded internally; sizes per backend, blockwise_plan.BLOCKS):

- a pre tile (blockwise_tiles.pre_tile) holds mix_pre(conv_pre(mask_0(logits))) for a block of
  queries x keys. Off the causal band (no output reads a masked logit) it is one matmul of
  widened q and k (the identity of pre_conv.py: min(c_q, c_k) x the head dim); on the band, or
  where a tile meets a document boundary, the zero-masked logits are convolved (exact both ways);
- a row strip (blockwise_strip.py) holds the pre tiles of one query block and the c_q' - 1 rows
  above it (the post conv's halo) for every key block up to the causal limit:
  [B, H, block_q + c_q' - 1, S + 2 r'], O(T) memory. The softmax statistics come from the strip
  as it is filled, and the output tiles read their probabilities (with the post conv's halo of
  rows above and r' columns each side) from it: no second pass over the logits.

Pre tiles computed (each query block's tiles up to the causal limit): forward 1 per tile,
backward 1 per tile (the strip again) plus 1 per band tile, whose VJP (autodiff of the convolved
tile) recomputes it; off the band blockwise_tiles.pre_tile_grads computes no logits (the widened
matmul's VJP needs only the widened q and k, the pre mixing's weight gradient reads the unmixed
logits kept in a second strip during the refill).

Backward (jax.custom_vjp; residuals: the inputs and the strips' statistics), query blocks last
to first: refill the strip; per output tile the VJP of the post part (post conv, post mixing,
mask_0, A v) w.r.t. the probabilities, v and the post kernels, accumulated into a strip of dP
(rows of block qb + 1's halo were added when it was done, so after the loop the block's own rows
are complete); delta_i = sum_j P_ij dP_ij; dY = P (dP - delta); the pre tiles' VJP of dY.
Forward-mode autodiff (jvp) is not defined.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from mta.attention.blockwise_backward import backward
from mta.attention.blockwise_plan import Blocks, Plan, default_blocks, padded_inputs
from mta.attention.blockwise_strip import empty_strip, logit_strip, strip_probs
from mta.attention.blockwise_tiles import out_tile
from mta.attention.core import check_heads, check_segments
from mta.attention.kernels import KernelSpec


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
    block_q: int | None = None,
    block_k: int | None = None,
    tuned: bool = False,
) -> jax.Array:
    """Blockwise MTA: q [B,T,H,D], k/v [B,S,K,D] (K divides H) -> [B,T,H,D] (v's dtype).

    Same arguments and result as the reference (mta/attention/reference.py), including a 5-D
    head_pre (the full 3-D pre conv); block_q / block_k (default: per backend, see
    blockwise_plan.BLOCKS) need not divide T / S. Memory is O(B * H * (block_q + c_q') * S)
    for a row strip plus O(B * T * H * D), forward and backward.
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
    default_q, default_k = default_blocks()
    block_q = default_q if block_q is None else block_q
    block_k = default_k if block_k is None else block_k
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}")
    num_t, num_s = q.shape[1], k.shape[1]
    plan = Plan(num_t, num_s, min(block_q, num_t), min(block_k, num_s), spec, tuned)
    return _attend(plan, q, k, v, kernels, segment_ids)


def _forward(plan: Plan, q, k, v, kernels, segment_ids):
    """-> out [B, T, H, D] (v's dtype), the strips' statistics (m, l) [num_qb, B, H, strip_rows]."""
    blocks = Blocks(plan, padded_inputs(plan, q, k, v, segment_ids))
    batch, heads, dim = q.shape[0], q.shape[2], q.shape[3]

    def block(qb, carry):
        strip, out, m_all, l_all = carry
        strip, (m_BHR, l_BHR), _ = logit_strip(plan, kernels, blocks, qb, strip, with_stats=True)

        def step(kb, acc_BRHD):
            p_BHRC, allowed_out, seg_rows, v_t = strip_probs(
                plan, blocks, qb, kb, strip, m_BHR, l_BHR
            )
            return acc_BRHD + out_tile(plan, kernels, p_BHRC, allowed_out, seg_rows, v_t)

        acc = jnp.zeros((batch, plan.block_q, heads, dim), jnp.float32)
        acc = lax.fori_loop(0, plan.key_blocks(qb), step, acc)
        out = lax.dynamic_update_slice_in_dim(out, acc, qb * plan.block_q, 1)
        m_all = lax.dynamic_update_index_in_dim(m_all, m_BHR, qb, 0)
        l_all = lax.dynamic_update_index_in_dim(l_all, l_BHR, qb, 0)
        return strip, out, m_all, l_all

    stats_shape = (plan.num_qb, batch, heads, plan.strip_rows)
    init = (
        empty_strip(plan, batch, heads),
        jnp.zeros((batch, plan.num_qb * plan.block_q, heads, dim), jnp.float32),
        jnp.zeros(stats_shape, jnp.float32),
        jnp.ones(stats_shape, jnp.float32),
    )
    _, out, m_all, l_all = lax.fori_loop(0, plan.num_qb, block, init)
    return out[:, : plan.num_t].astype(v.dtype), (m_all, l_all)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(plan: Plan, q, k, v, kernels, segment_ids):
    return _forward(plan, q, k, v, kernels, segment_ids)[0]


def _attend_fwd(plan: Plan, q, k, v, kernels, segment_ids):
    out, stats = _forward(plan, q, k, v, kernels, segment_ids)
    return out, (q, k, v, kernels, segment_ids, stats)


_attend.defvjp(_attend_fwd, backward)

"""Multi-Token Attention with dense [B, H, T, S] maps, tuned (impl="dense").

Same contract and results as reference.py, computed in a different order where that was
measured to be faster on XLA:CPU:
- the pre-softmax key-query conv comes out of one widened q.k matmul (pre_conv.py) instead of
  convolving the logits, when there are no documents;
- with a post-softmax conv and no documents, the maps are kept c_k' - 1 columns wider from the
  logits to A v, so the post conv is a shift of the flat map (depthwise_conv_flat) and nothing
  crops or reshapes a [T, S] map (XLA:CPU fuses such a reshape into the conv loops next to it,
  which then run several times slower);
- with tuned=True, hand-written derivatives (softmax, head mixing, depthwise conv) that keep
  XLA:CPU from transposing or recomputing maps (see core.tuned_vjp for when they are on).
"""

import jax
import jax.numpy as jnp

from mta.attention.conv import conv3d_heads, key_query_conv, mix_heads
from mta.attention.core import (
    attention_logits,
    causal_attention,
    causal_mask,
    check_segments,
    masked_softmax,
    weight_values,
)
from mta.attention.depthwise import depthwise_conv_flat
from mta.attention.kernels import KernelSpec
from mta.attention.pre_conv import conv_logits

# the wide maps' row stride is rounded up to a multiple of this (the key-window kernel
# gradient of depthwise.py reads whole windows of 16 columns)
ROW_ALIGN = 16


def multi_token_attention_dense(
    q,
    k,
    v,
    kq_pre=None,
    head_pre=None,
    kq_post=None,
    head_post=None,
    segment_ids=None,
    tuned=True,
) -> jax.Array:
    """q [B,T,H,D], k/v [B,S,K,D] -> [B,T,H,D] (v's dtype); arguments as reference.py's.
    tuned: hand-written derivatives and the wide post-softmax form (XLA:CPU)."""
    spec = KernelSpec.of(q.shape[2], kq_pre, head_pre, kq_post, head_post)
    check_segments(segment_ids, q.shape, k.shape)
    if spec.plain:
        return causal_attention(q, k, v, segment_ids, tuned)
    if tuned and spec.kq_post and segment_ids is None:
        return _wide_post_softmax_attention(q, k, v, kq_pre, head_pre, kq_post, head_post)
    kernels = dict(kq_pre=kq_pre, head_pre=head_pre, kq_post=kq_post, head_post=head_post)
    weights_BHTS = attention_weights(q, k, **kernels, segment_ids=segment_ids, tuned=tuned)
    # out = A v: b h t s, b s k d -> b t h d
    return weight_values(weights_BHTS, v)


def attention_weights(
    q, k, kq_pre=None, head_pre=None, kq_post=None, head_post=None, segment_ids=None, tuned=False
) -> jax.Array:
    """The attention map A: q [B,T,H,D], k [B,S,K,D] -> [B,H,T,S] float32, kernels and
    segment_ids as in reference.py. Rows sum to 1 unless something follows the softmax (rows
    are not renormalised after it)."""
    spec = KernelSpec.of(q.shape[2], kq_pre, head_pre, kq_post, head_post)
    check_segments(segment_ids, q.shape, k.shape)
    mask_B1TS = causal_mask(q.shape[1], k.shape[1], segment_ids)
    logits_BHTS = _pre_softmax_logits(q, k, spec, kq_pre, head_pre, segment_ids, mask_B1TS, tuned)
    # mask_-inf + softmax over keys in float32: b h t s -> b h t s
    weights_BHTS = masked_softmax(logits_BHTS, mask_B1TS, tuned)
    # post key-query conv on the probabilities (rows are not renormalised)
    if kq_post is not None:
        weights_BHTS = key_query_conv(weights_BHTS, kq_post, segment_ids, tuned)
    # post head mixing, grouped: b (n i) t s, n i o -> b (n o) t s
    if head_post is not None:
        weights_BHTS = mix_heads(weights_BHTS, head_post, tuned)
    # mask_0 again: the post conv spreads weight onto future keys
    if spec.post:
        weights_BHTS = jnp.where(mask_B1TS, weights_BHTS, 0.0)
    return weights_BHTS


def _pre_softmax_logits(q, k, spec, kq_pre, head_pre, segment_ids, mask_B1TW, tuned):
    """mix_pre(conv_pre(mask_0(q k^T / sqrt(D)))) -> [B, H, T, W] float32, W = the mask's width
    (>= S; columns from S on are masked by the caller)."""
    num_keys, num_cols = k.shape[1], mask_B1TW.shape[3]
    fused_pre = kq_pre is not None and segment_ids is None
    if fused_pre:
        # logits, mask_0 and the pre key-query conv in one widened matmul (pre_conv.py)
        logits_BHTW = conv_logits(q, k, kq_pre, num_cols)
    else:
        # logits = q k^T / sqrt(D): b t h d, b s k d -> b h t s (float32)
        k_BWKD = jnp.pad(k, ((0, 0), (0, num_cols - num_keys), (0, 0), (0, 0)))
        logits_BHTW = attention_logits(q, k_BWKD)
    # mask_0: zero the masked logits so the conv never reads a future or foreign key
    if spec.pre_conv and not fused_pre:
        logits_BHTW = jnp.where(mask_B1TW, logits_BHTW, 0.0)
    # pre key-query conv, depthwise: b h t s, h q k -> b h t s
    if kq_pre is not None and not fused_pre:
        logits_BHTW = key_query_conv(logits_BHTW, kq_pre, segment_ids, tuned)
    # pre head mixing: b h t s, h h -> b h t s (or grouped n i o; or the 3-D conv n i o q k)
    if spec.head_pre == "conv3d":
        logits_BHTW = conv3d_heads(logits_BHTW, head_pre, segment_ids, tuned)
    elif head_pre is not None:
        logits_BHTW = mix_heads(logits_BHTW, head_pre, tuned)
    return logits_BHTW


def _wide_post_softmax_attention(q, k, v, kq_pre, head_pre, kq_post, head_post) -> jax.Array:
    """Dense MTA with a post conv and no documents, on maps kept W >= S + c_k - 1 columns wide
    from the logits to the product with v (v gets zero rows): -> [B, T, H, D]. The post conv is
    then a shift of the flat map: row i's left padding is row i-1's masked tail."""
    spec = KernelSpec.of(q.shape[2], kq_pre, head_pre, kq_post, head_post)
    batch, num_queries, heads = q.shape[:3]
    num_keys = k.shape[1]
    c_q, c_k = spec.post_taps
    r = spec.post_r
    stride = -(-(num_keys + c_k - 1) // ROW_ALIGN) * ROW_ALIGN
    mask_B1TW = jnp.pad(
        causal_mask(num_queries, num_keys), ((0, 0),) * 3 + ((0, stride - num_keys),)
    )
    logits_BHTW = _pre_softmax_logits(q, k, spec, kq_pre, head_pre, None, mask_B1TW, True)
    probs_BHTW = masked_softmax(logits_BHTW, mask_B1TW, True)  # 0 from column S on
    # post conv: c_q - 1 zero rows on top, r zeros before the first row
    front = (c_q - 1) * stride + r
    flat_BHL = jnp.pad(probs_BHTW.reshape(batch, heads, -1), ((0, 0), (0, 0), (front, c_k - 1 - r)))
    conv_BHL = depthwise_conv_flat(flat_BHL, kq_post, stride, num_queries * stride)
    weights_BHTW = conv_BHL.reshape(batch, heads, num_queries, stride)
    if head_post is not None:
        weights_BHTW = mix_heads(weights_BHTW, head_post, True)
    weights_BHTW = jnp.where(mask_B1TW, weights_BHTW, 0.0)
    v_BWKD = jnp.pad(v, ((0, 0), (0, stride - num_keys), (0, 0), (0, 0)))
    return weight_values(weights_BHTW, v_BWKD)

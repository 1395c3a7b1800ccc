"""Multi-Token Attention (Golovneva et al. 2025), the dense reference path. See docs/mta.md.

    A = mask_0(mix_post(conv_post(softmax(mask_-inf(mix_pre(conv_pre(mask_0(q k^T / sqrt(D))))))))
    out = A v

Every kernel is optional; with all of them None this is plain causal attention (core).
Queries are the last T of S key positions. When S > T (decoding) the convolutions along queries
see only the T query rows present: rows before the first query read 0, so to reproduce a full
forward pass a caller must pass at least the c_q - 1 preceding queries as well.
"""

import jax
import jax.numpy as jnp

from mta.attention.blockwise import multi_token_attention_blockwise
from mta.attention.conv import (
    check_head_kernel,
    check_kq_kernel,
    conv3d_heads,
    key_query_conv,
    mix_heads,
)
from mta.attention.core import (
    attention_logits,
    causal_attention,
    causal_mask,
    masked_softmax,
    weight_values,
)
from mta.attention.depthwise import depthwise_conv_flat
from mta.attention.pre_conv import conv_logits

IMPLS = ("dense", "blockwise", "auto")
AUTO_BLOCKWISE_MIN_KEYS = 1024  # impl="auto" takes the blockwise path from this many keys S on
# the wide maps' row stride is rounded up to a multiple of this (kept from session 4's
# key-window kernel gradient, which needed it; not re-measured without)
ROW_ALIGN = 16


def multi_token_attention(
    q,
    k,
    v,
    kq_pre=None,
    head_pre=None,
    kq_post=None,
    head_post=None,
    segment_ids=None,
    impl="dense",
) -> jax.Array:
    """Multi-Token Attention: q [B,T,H,D], k/v [B,S,K,D] (K divides H) -> [B,T,H,D] (v's dtype).

    kq_pre:    [H, c_q, c_k] key-query conv on the zero-masked logits (c_k odd), or None.
    head_pre:  [H, H] linear or [H//c_h, c_h, c_h] grouped ([group, in, out]) logit mixing, or a
               5-D [H//c_h, c_h, c_h, c_q, c_k] 3-D conv kernel that replaces kq_pre + head_pre.
    kq_post:   [H, c_q, c_k] key-query conv on the attention weights, or None.
    head_post: [H//c_h, c_h, c_h] grouped (or [H, H] linear) weight mixing, or None.
    segment_ids: [B, T] document ids (needs S == T); attention and convolutions stay inside a
               document, so a packed row equals its documents run separately.
    impl:      "dense" (this function), "blockwise" (blockwise.py: O(T) memory, same result) or
               "auto" (blockwise when S >= AUTO_BLOCKWISE_MIN_KEYS, else dense).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = "blockwise" if k.shape[1] >= AUTO_BLOCKWISE_MIN_KEYS else "dense"
    if impl == "blockwise":
        kernels = dict(kq_pre=kq_pre, head_pre=head_pre, kq_post=kq_post, head_post=head_post)
        return multi_token_attention_blockwise(q, k, v, **kernels, segment_ids=segment_ids)
    if all(x is None for x in (kq_pre, head_pre, kq_post, head_post)):
        return causal_attention(q, k, v, segment_ids)
    if kq_post is not None and segment_ids is None:
        return _wide_post_softmax_attention(q, k, v, kq_pre, head_pre, kq_post, head_post)
    weights_BHTS = attention_weights(q, k, kq_pre, head_pre, kq_post, head_post, segment_ids)
    # out = A v: b h t s, b s k d -> b t h d
    return weight_values(weights_BHTS, v)


def attention_weights(
    q, k, kq_pre=None, head_pre=None, kq_post=None, head_post=None, segment_ids=None
) -> jax.Array:
    """The attention map A of multi_token_attention (dense): q [B,T,H,D], k [B,S,K,D]
    -> [B,H,T,S] float32, kernels and segment_ids as there. Rows sum to 1 unless a post-softmax
    kernel is set (rows are not renormalised after it)."""
    check_kernels(q.shape[2], kq_pre, head_pre, kq_post, head_post)
    _check_segments(segment_ids, q.shape, k.shape)
    mask_B1TS = causal_mask(q.shape[1], k.shape[1], segment_ids)
    logits_BHTS = _pre_softmax_logits(q, k, kq_pre, head_pre, segment_ids, mask_B1TS)
    # mask_-inf + softmax over keys in float32: b h t s -> b h t s
    weights_BHTS = masked_softmax(logits_BHTS, mask_B1TS)
    # post key-query conv on the probabilities (rows are not renormalised)
    if kq_post is not None:
        weights_BHTS = key_query_conv(weights_BHTS, kq_post, segment_ids)
    # post head mixing, grouped: b (n i) t s, n i o -> b (n o) t s
    if head_post is not None:
        weights_BHTS = mix_heads(weights_BHTS, head_post)
    # mask_0 again: the post conv spreads weight onto future keys
    if kq_post is not None or head_post is not None:
        weights_BHTS = jnp.where(mask_B1TS, weights_BHTS, 0.0)
    return weights_BHTS


def _pre_softmax_logits(q, k, kq_pre, head_pre, segment_ids, mask_B1TW) -> jax.Array:
    """mix_pre(conv_pre(mask_0(q k^T / sqrt(D)))) -> [B, H, T, W] float32, W = the mask's width
    (>= S; columns from S on are masked by the caller)."""
    num_keys, num_cols = k.shape[1], mask_B1TW.shape[3]
    conv_pre_3d = head_pre is not None and jnp.ndim(head_pre) == 5
    if kq_pre is not None and segment_ids is None:
        # logits, mask_0 and the pre key-query conv in one widened matmul (pre_conv.py)
        logits_BHTW = conv_logits(q, k, kq_pre, num_cols)
    else:
        # logits = q k^T / sqrt(D): b t h d, b s k d -> b h t s (float32)
        k_BWKD = jnp.pad(k, ((0, 0), (0, num_cols - num_keys), (0, 0), (0, 0)))
        logits_BHTW = attention_logits(q, k_BWKD)
    # mask_0: zero the masked logits so the conv never reads a future or foreign key
    if (kq_pre is not None and segment_ids is not None) or conv_pre_3d:
        logits_BHTW = jnp.where(mask_B1TW, logits_BHTW, 0.0)
    # pre key-query conv, depthwise: b h t s, h q k -> b h t s
    if kq_pre is not None and segment_ids is not None:
        logits_BHTW = key_query_conv(logits_BHTW, kq_pre, segment_ids)
    # pre head mixing: b h t s, h h -> b h t s (or grouped n i o; or the 3-D conv n i o q k)
    if conv_pre_3d:
        logits_BHTW = conv3d_heads(logits_BHTW, head_pre, segment_ids)
    elif head_pre is not None:
        logits_BHTW = mix_heads(logits_BHTW, head_pre)
    return logits_BHTW


def _wide_post_softmax_attention(q, k, v, kq_pre, head_pre, kq_post, head_post) -> jax.Array:
    """multi_token_attention with a post conv and no documents, on maps kept W >= S + c_k - 1
    columns wide from the logits to the product with v (v gets zero rows): -> [B, T, H, D].

    The post conv is then a shift of the flat map (depthwise_conv_flat: row i's left padding is
    row i-1's masked tail), and nothing between the logits and A v crops or reshapes a [T, S]
    map; XLA:CPU fuses such a reshape into the conv loops next to it, which then run ~4x slower.
    """
    check_kernels(q.shape[2], kq_pre, head_pre, kq_post, head_post)
    batch, num_queries, heads = q.shape[:3]
    num_keys = k.shape[1]
    c_q, c_k = kq_post.shape[1:]
    r = (c_k - 1) // 2
    stride = -(-(num_keys + c_k - 1) // ROW_ALIGN) * ROW_ALIGN
    mask_B1TW = jnp.pad(
        causal_mask(num_queries, num_keys), ((0, 0),) * 3 + ((0, stride - num_keys),)
    )
    logits_BHTW = _pre_softmax_logits(q, k, kq_pre, head_pre, None, mask_B1TW)
    probs_BHTW = masked_softmax(logits_BHTW, mask_B1TW)  # 0 from column S on
    # post conv: c_q - 1 zero rows on top, r zeros before the first row
    front = (c_q - 1) * stride + r
    flat_BHL = jnp.pad(probs_BHTW.reshape(batch, heads, -1), ((0, 0), (0, 0), (front, c_k - 1 - r)))
    conv_BHL = depthwise_conv_flat(flat_BHL, kq_post, stride, num_queries * stride)
    weights_BHTW = conv_BHL.reshape(batch, heads, num_queries, stride)
    if head_post is not None:
        weights_BHTW = mix_heads(weights_BHTW, head_post)
    weights_BHTW = jnp.where(mask_B1TW, weights_BHTW, 0.0)
    v_BWKD = jnp.pad(v, ((0, 0), (0, stride - num_keys), (0, 0), (0, 0)))
    return weight_values(weights_BHTW, v_BWKD)


def check_kernels(num_heads, kq_pre, head_pre, kq_post, head_post) -> None:
    """Raises ValueError naming the first kernel whose shape does not fit H."""
    if kq_pre is not None:
        check_kq_kernel(kq_pre, num_heads, "kq_pre")
    if head_pre is not None:
        check_head_kernel(head_pre, num_heads, "head_pre", full_3d=True)
        if jnp.ndim(head_pre) == 5 and kq_pre is not None:
            raise ValueError(
                "a 5-D head_pre is the full 3-D pre-softmax conv and replaces kq_pre: "
                "pass kq_pre=None (or factorise into kq_pre + a grouped head_pre)"
            )
    if kq_post is not None:
        check_kq_kernel(kq_post, num_heads, "kq_post")
    if head_post is not None:
        check_head_kernel(head_post, num_heads, "head_post")


def _check_segments(segment_ids, q_shape, k_shape) -> None:
    """segment_ids must be [B, T] and, for the convolutions, S == T."""
    if segment_ids is None:
        return
    if tuple(segment_ids.shape) != (q_shape[0], q_shape[1]) or k_shape[1] != q_shape[1]:
        raise ValueError(
            f"segment_ids must be [B, T] = [{q_shape[0]}, {q_shape[1]}] with S == T, got "
            f"segment_ids {tuple(segment_ids.shape)}, T={q_shape[1]}, S={k_shape[1]}"
        )

"""Differential attention (DIFF Transformer, Ye et al. 2024), the baseline of docs/mta.md.

    out_h = softmax(q1_h k1^T / sqrt(D)) v - lambda_h * softmax(q2_h k2^T / sqrt(D)) v

Layout: q is [B, T, 2H', D] and k is [B, S, 2K', D]; query heads 2h and 2h + 1 are the two halves
(q1, q2) of output head h, key heads 2m and 2m + 1 the halves (k1, k2) of key pair m. Values are
[B, S, K', 2D] (one value head of width 2D per key pair). Output head h reads key/value pair
h // (H' / K') (GQA/MQA when K' < H'). For MHA this is the official code's layout
(`view(..., 2 * num_heads, head_dim)` then pairs of consecutive heads); its GQA `repeat_kv` over the
2H' half-heads instead pairs q halves with consecutive k half-heads, which we do not copy.
"""

import math

import jax
import jax.numpy as jnp
from einops import rearrange

from mta.attention.core import (
    attention_logits,
    causal_mask,
    check_segments,
    masked_softmax,
    weight_values,
)


def differential_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    lam: jax.Array | float,
    segment_ids: jax.Array | None = None,
    tuned: bool = False,
) -> jax.Array:
    """q [B,T,2H',D], k [B,S,2K',D], v [B,S,K',2D], lam scalar or [H'] -> [B,T,H',2D] (v's dtype).

    segment_ids [B, T] (S == T) keeps attention inside documents, as in causal_attention.
    tuned: masked_softmax's custom JVP (core.tuned_vjp).
    """
    if q.shape[2] % 2 or k.shape[2] % 2 or k.shape[2] // 2 != v.shape[2]:
        raise ValueError(
            f"need q [B,T,2H',D], k [B,S,2K',D], v [B,S,K',2D]; got q {q.shape}, k {k.shape}, "
            f"v {v.shape}"
        )
    q1_BTHD, q2_BTHD = rearrange(q, "b t (h two) d -> two b t h d", two=2)
    k1_BSKD, k2_BSKD = rearrange(k, "b s (k two) d -> two b s k d", two=2)
    check_segments(segment_ids, q.shape, k.shape)
    mask = causal_mask(q.shape[1], k.shape[1], segment_ids)
    probs1_BHTS = masked_softmax(attention_logits(q1_BTHD, k1_BSKD), mask, tuned)
    probs2_BHTS = masked_softmax(attention_logits(q2_BTHD, k2_BSKD), mask, tuned)
    lam_1H11 = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (q1_BTHD.shape[2],))[:, None, None]
    # (p1 - lambda p2) v == p1 v - lambda p2 v: b h t s, b s k (2d) -> b t h (2d)
    return weight_values(probs1_BHTS - lam_1H11 * probs2_BHTS, v)


def diff_lambda(lq1, lk1, lq2, lk2, lambda_init) -> jax.Array:
    """lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init, dot over the last axis ([..., D]).

    Vectors [D] give one scalar lambda shared by all heads, [H', D] one per head. float32.
    """
    dot1 = jnp.sum(jnp.asarray(lq1, jnp.float32) * jnp.asarray(lk1, jnp.float32), axis=-1)
    dot2 = jnp.sum(jnp.asarray(lq2, jnp.float32) * jnp.asarray(lk2, jnp.float32), axis=-1)
    return jnp.exp(dot1) - jnp.exp(dot2) + lambda_init


def diff_lambda_init(layer_index: int) -> float:
    """lambda_init(l) = 0.8 - 0.6 * exp(-0.3 * l) for 0-based layer index l."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


def diff_head_norm(
    out_BTHD: jax.Array, weight_D: jax.Array, lambda_init: float, eps: float = 1e-5
) -> jax.Array:
    """Per-head RMSNorm over the last axis in float32 (one [D] weight), times (1 - lambda_init).

    out [B, T, H', 2D] -> same shape and dtype; the DIFF paper's GroupNorm + depth scaling.
    """
    x = out_BTHD.astype(jnp.float32)
    normed = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return (normed * weight_D.astype(jnp.float32) * (1.0 - lambda_init)).astype(out_BTHD.dtype)

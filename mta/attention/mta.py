"""Multi-Token Attention (placeholder: plain causal attention until the MTA kernels land)."""

import jax

from mta.attention.core import causal_attention


def multi_token_attention(
    q, k, v, kq_pre=None, head_pre=None, kq_post=None, head_post=None,
    segment_ids=None, impl="dense",
) -> jax.Array:
    """[B,T,H,D], [B,S,K,D], [B,S,K,D] -> [B,T,H,D]. Kernels are not implemented yet."""
    if any(x is not None for x in (kq_pre, head_pre, kq_post, head_post)):
        raise NotImplementedError("MTA kernels")
    return causal_attention(q, k, v, segment_ids)

"""Stick-breaking attention (Tan et al., "Scaling Stick-Breaking Attention", arXiv 2410.17980).

No softmax: each query breaks a stick of length 1 over the preceding keys, nearest first. With
z_ij = q_i . k_j / sqrt(D) and beta_ij = sigmoid(z_ij),

    A_ij = beta_ij * prod_{j<k<i} (1 - beta_ik)         keys j < i (the reference release)
    out_i = sum_{j<i} A_ij v_j + (1 - sum_{j<i} A_ij) v_i

the remainder of the stick weighting the query's own value. With attend_current the query's
own key takes part like the others (k ranges over j < k <= i, keys j <= i) and there is no
remainder. Computed in log space: log A_ij = log sigmoid(z_ij) + sum_k log sigmoid(-z_ik), the
sum a reverse cumulative sum along keys starting at the query (so precision is kept where the
weights are large), and the remainder exp(sum_{k<i} log sigmoid(-z_ik)). Both forms are one
weight map A (the remainder on the diagonal) times the values. Positions come from the order
of breaking, so the layer needs no RoPE. Packed documents: keys of other documents are masked
(they neither take nor break the stick).
"""

import jax
import jax.numpy as jnp

from mta.attention import decode as cached
from mta.attention.chunked import CHUNK, over_query_chunks, rows_mask, use_chunks
from mta.attention.core import attention_logits, check_segments, weight_values


def stick_breaking_weights(z_BHTS, allowed, own, attend_current: bool = False) -> jax.Array:
    """Weights [B, H, T, S] float32 from logits z, the causal (document) mask `allowed` (own key
    included) and `own` (each query's own key position), both broadcastable to z."""
    z = z_BHTS.astype(jnp.float32)
    breaks = allowed if attend_current else allowed & ~own
    log_keep = jnp.where(breaks, jax.nn.log_sigmoid(-z), 0.0)
    # sum over keys k > j that break the stick before j (keys after the query are 0)
    after = jnp.flip(jnp.cumsum(jnp.flip(log_keep, -1), axis=-1), -1) - log_keep
    weights = jnp.where(breaks, jnp.exp(jax.nn.log_sigmoid(z) + after), 0.0)
    if attend_current:
        return weights
    remainder = jnp.exp(jnp.sum(log_keep, axis=-1, keepdims=True))
    return weights + jnp.where(own & allowed, remainder, 0.0)


def stick_breaking_attention(
    q_BTHD, k_BSKD, v_BSKD, segment_ids=None, attend_current=False, impl="dense", chunk=CHUNK
) -> jax.Array:
    """q [B,T,H,D], k/v [B,S,K,D] (K divides H) -> [B,T,H,D] (v's dtype); queries are the last
    T of the S positions. segment_ids [B, T] (S == T) keeps attention inside documents. impl:
    dense, or the chunked O(T)-memory path (mta.attention.chunked.use_chunks)."""
    check_segments(segment_ids, q_BTHD.shape, k_BSKD.shape)
    num_t, num_s = q_BTHD.shape[1], k_BSKD.shape[1]

    def rows(pos_C, q_BCHD, seg_BC=None):
        allowed, own = rows_mask(pos_C, num_s, num_s - num_t, seg_BC, segment_ids)
        z = attention_logits(q_BCHD, k_BSKD)
        return weight_values(stick_breaking_weights(z, allowed, own, attend_current), v_BSKD)

    per_query = (q_BTHD,) + (() if segment_ids is None else (segment_ids,))
    if use_chunks(impl, q_BTHD.shape, k_BSKD.shape):
        return over_query_chunks(rows, chunk, *per_query)
    return rows(jnp.arange(num_t), *per_query)


def sb_prefill(q, k, v, lengths, max_len: int, attend_current=False, impl="dense"):
    """Prompt pass: q [B,T,H,D], k/v [B,T,K,D] right-padded prompts of `lengths` [B]
    -> (out [B,T,H,D], LayerCache: keys and values only)."""
    out_BTHD = stick_breaking_attention(q, k, v, attend_current=attend_current, impl=impl)
    lengths_B = jnp.asarray(lengths, jnp.int32)
    k_BKSD, v_BKSD = cached._pad_to_cache(k, v, lengths_B, max_len)
    no_rows = jnp.zeros((q.shape[0], q.shape[2], 0, max_len), jnp.float32)
    return out_BTHD, cached.LayerCache(k_BKSD, v_BKSD, lengths_B, no_rows, no_rows)


def sb_attend_step(q_B1HD, k_B1KD, v_B1KD, cache: cached.LayerCache, attend_current=False):
    """One token per row at position cache.lengths, reading the cache only: its logit row
    against the cached keys and its own, stick-breaking weights, values
    -> (out [B,1,H,D], CacheUpdate)."""
    mask_B11S, new_B11S = cached._row_masks(cache)
    z_BH1S = cached._new_row_logits(q_B1HD, k_B1KD, cache, new_B11S)
    weights_BH1S = stick_breaking_weights(z_BH1S, mask_B11S, new_B11S, attend_current)
    out_B1HD = cached._new_row_values(weights_BH1S, v_B1KD, cache, new_B11S)
    return out_B1HD, cached.CacheUpdate(k_B1KD, v_B1KD, cache.logit_rows, cache.prob_rows)

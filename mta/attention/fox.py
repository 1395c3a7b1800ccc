"""Forgetting attention (FoX: Lin et al., "Forgetting Transformer", ICLR 2025).

Softmax attention whose logits carry a data-dependent decay: each head has a forget gate per
token, f_t = sigmoid(w_f . x_t + b_f), and query i reads key j <= i with the bias

    D_ij = sum_{l=j+1}^{i} log f_l = c_i - c_j,   c_t = sum_{l<=t} log f_l
    out_i = sum_j softmax_j(q_i . k_j / sqrt(D) + D_ij) v_j

With f = 1 it is the baseline. The gate's log is given per key position, log_f [B, S, H] (the
queries are the last T of the S positions). Packed documents: the cumulative sum restarts at
each document's first token (a segmented scan), so c_i - c_j of a pair inside a document
involves only that document's gates, exactly and in rounding too (a plain cumsum would carry
earlier documents' gates into both terms and leak ~1e-8 through them), and pairs across
documents are masked. Cached decoding keeps c_j of every cached key (LayerCache.key_bias).
"""

import jax
import jax.numpy as jnp
from einops import rearrange

from mta.attention import decode as cached
from mta.attention.chunked import CHUNK, over_query_chunks, rows_mask, use_chunks
from mta.attention.core import (
    attention_logits,
    causal_mask,
    check_segments,
    masked_softmax,
    weight_values,
)


def log_forget_gate(gate_logits_BTH: jax.Array) -> jax.Array:
    """log f = log sigmoid(w_f . x + b_f) in float32: [B, T, H] -> [B, T, H]."""
    return jax.nn.log_sigmoid(gate_logits_BTH.astype(jnp.float32))


def cumulative_log_forget(log_f_BSH, segment_ids=None) -> jax.Array:
    """c [B, H, S] float32: c_t = sum of log f_l over l <= t in t's document (the whole row
    without segment_ids)."""
    log_f_BHS = rearrange(log_f_BSH.astype(jnp.float32), "b s h -> b h s")
    if segment_ids is None:
        return jnp.cumsum(log_f_BHS, axis=-1)
    starts_BS = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1
    )

    def combine(left, right):  # restart the sum where a document starts
        (sum_l, start_l), (sum_r, start_r) = left, right
        return jnp.where(start_r, sum_r, sum_l + sum_r), start_l | start_r

    starts_BHS = jnp.broadcast_to(starts_BS[:, None], log_f_BHS.shape)
    return jax.lax.associative_scan(combine, (log_f_BHS, starts_BHS), axis=-1)[0]


def forgetting_attention(
    q_BTHD, k_BSKD, v_BSKD, log_f_BSH, segment_ids=None, impl="dense", chunk=CHUNK
) -> jax.Array:
    """q [B,T,H,D], k/v [B,S,K,D] (K divides H), log_f [B,S,H] -> [B,T,H,D] (v's dtype).

    segment_ids [B, T] (S == T): attention stays inside documents. impl: dense (the [B,H,T,S]
    map at once) or the chunked O(T)-memory path (mta.attention.chunked.use_chunks)."""
    check_segments(segment_ids, q_BTHD.shape, k_BSKD.shape)
    num_t, num_s = q_BTHD.shape[1], k_BSKD.shape[1]
    c_BHS = cumulative_log_forget(log_f_BSH, segment_ids)
    if not use_chunks(impl, q_BTHD.shape, k_BSKD.shape):
        bias_BHTS = c_BHS[:, :, num_s - num_t :, None] - c_BHS[:, :, None, :]
        logits = attention_logits(q_BTHD, k_BSKD) + bias_BHTS
        mask = causal_mask(num_t, num_s, segment_ids)
        return weight_values(masked_softmax(logits, mask), v_BSKD)

    def rows(pos_C, q_BCHD, c_BCH, seg_BC=None):
        allowed, _ = rows_mask(pos_C, num_s, num_s - num_t, seg_BC, segment_ids)
        bias_BHCS = rearrange(c_BCH, "b c h -> b h c")[..., None] - c_BHS[:, :, None, :]
        logits = attention_logits(q_BCHD, k_BSKD) + bias_BHCS
        return weight_values(masked_softmax(logits, allowed), v_BSKD)

    c_BTH = rearrange(c_BHS[:, :, num_s - num_t :], "b h t -> b t h")
    per_query = (q_BTHD, c_BTH) + (() if segment_ids is None else (segment_ids,))
    return over_query_chunks(rows, chunk, *per_query)


def fox_prefill(q, k, v, log_f_BTH, lengths, max_len: int, impl="dense"):
    """Prompt pass: q [B,T,H,D], k/v [B,T,K,D], log_f [B,T,H], right-padded prompts of
    `lengths` [B] -> (out [B,T,H,D], LayerCache with key_bias = c of each prompt position)."""
    out_BTHD = forgetting_attention(q, k, v, log_f_BTH, impl=impl)
    lengths_B = jnp.asarray(lengths, jnp.int32)
    k_BKSD, v_BKSD = cached._pad_to_cache(k, v, lengths_B, max_len)
    c_BHT = cumulative_log_forget(log_f_BTH)
    c_BHT = jnp.where(jnp.arange(q.shape[1]) < lengths_B[:, None, None], c_BHT, 0.0)
    key_bias = jnp.pad(c_BHT, ((0, 0), (0, 0), (0, max_len - q.shape[1])))
    no_rows = jnp.zeros((q.shape[0], q.shape[2], 0, max_len), jnp.float32)
    return out_BTHD, cached.LayerCache(k_BKSD, v_BKSD, lengths_B, no_rows, no_rows, key_bias)


def fox_attend_step(q_B1HD, k_B1KD, v_B1KD, log_f_B1H, cache: cached.LayerCache):
    """One token per row at position cache.lengths, reading the cache only: c_p = c_{p-1} +
    log f_p, logits + c_p - c_j, softmax, values -> (out [B,1,H,D], CacheUpdate)."""
    mask_B11S, new_B11S = cached._row_masks(cache)
    rows_B = jnp.arange(cache.k.shape[0])
    previous_BH = jnp.where(
        cache.lengths[:, None] > 0, cache.key_bias[rows_B, :, cache.lengths - 1], 0.0
    )
    c_BH = previous_BH + log_f_B1H[:, 0].astype(jnp.float32)
    c_key_BH1S = jnp.where(new_B11S, c_BH[:, :, None, None], cache.key_bias[:, :, None])
    bias_BH1S = c_BH[:, :, None, None] - c_key_BH1S
    logits = cached._new_row_logits(q_B1HD, k_B1KD, cache, new_B11S) + bias_BH1S
    weights_BH1S = masked_softmax(logits, mask_B11S)
    out_B1HD = cached._new_row_values(weights_BH1S, v_B1KD, cache, new_B11S)
    update = cached.CacheUpdate(k_B1KD, v_B1KD, cache.logit_rows, cache.prob_rows, c_BH[:, :, None])
    return out_B1HD, update

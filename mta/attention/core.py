"""Building blocks shared by every attention variant: logits, masks, softmax, value weighting.

Layouts (see docs/mta.md): activations are [B, T, H, D]; keys/values [B, S, K, D] with K dividing H
(query head h reads key/value head h // (H // K)); logits and weights are [B, H, T, S].
Queries are the last T of the S key positions (S == T in training, S > T when decoding).
"""

import jax
import jax.numpy as jnp
from einops import rearrange


def check_heads(num_heads: int, num_kv_heads: int) -> int:
    """Returns the number of query heads per key/value head; raises if K does not divide H."""
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(f"key/value heads ({num_kv_heads}) must divide query heads ({num_heads})")
    return num_heads // num_kv_heads


def attention_logits(q_BTHD: jax.Array, k_BSKD: jax.Array) -> jax.Array:
    """Scaled dot products q . k / sqrt(D) in float32.

    q: [B, T, H, D], k: [B, S, K, D] -> logits [B, H, T, S].
    """
    group = check_heads(q_BTHD.shape[2], k_BSKD.shape[2])
    q_BTKGD = rearrange(q_BTHD, "b t (k g) d -> b t k g d", g=group)
    logits_BKGTS = jnp.einsum(
        "btkgd,bskd->bkgts", q_BTKGD, k_BSKD, preferred_element_type=jnp.float32
    )
    scale = q_BTHD.shape[-1] ** -0.5
    return rearrange(logits_BKGTS, "b k g t s -> b (k g) t s") * scale


def weight_values(weights_BHTS: jax.Array, v_BSKD: jax.Array) -> jax.Array:
    """Weighted sum of values: weights [B, H, T, S], v [B, S, K, D] -> [B, T, H, D] (v's dtype)."""
    group = check_heads(weights_BHTS.shape[1], v_BSKD.shape[2])
    # [T, S] @ [S, D] per head: with the weights on the left XLA:CPU reads them row by row (with
    # v on the left it transposed the whole [B, H, T, S] map first, fused into its producer)
    weights_BKRS = rearrange(weights_BHTS, "b (k g) t s -> b k (g t) s", g=group)
    v_BKSD = rearrange(v_BSKD, "b s k d -> b k s d")
    out_BKRD = jnp.einsum(
        "bkrs,bksd->bkrd",
        weights_BKRS.astype(v_BSKD.dtype),
        v_BKSD,
        preferred_element_type=jnp.float32,
    )
    return rearrange(out_BKRD, "b k (g t) d -> b t (k g) d", g=group).astype(v_BSKD.dtype)


def causal_mask(
    num_queries: int,
    num_keys: int,
    segment_ids: jax.Array | None = None,
    key_segment_ids: jax.Array | None = None,
) -> jax.Array:
    """Which (query, key) pairs may interact: [B or 1, 1, T, S] booleans.

    Query i sits at key position i + S - T. With segment_ids ([B, T] ints, one id per packed
    document) a pair is allowed only inside one document; key_segment_ids ([B, S]) defaults to
    segment_ids, which requires S == T.
    """
    offset = num_keys - num_queries
    query_pos = jnp.arange(num_queries)[:, None] + offset
    key_pos = jnp.arange(num_keys)[None, :]
    mask_TS = key_pos <= query_pos
    if segment_ids is None:
        return mask_TS[None, None]
    if key_segment_ids is None:
        key_segment_ids = segment_ids
    same_doc_BTS = segment_ids[:, :, None] == key_segment_ids[:, None, :]
    return (mask_TS[None] & same_doc_BTS)[:, None]


def tuned_vjp(flag: bool | None) -> bool:
    """Whether to use the hand-written derivatives (custom JVPs/VJPs) of the tuned paths.

    They were written from and measured on XLA:CPU profiles, so None (auto) means on for the
    CPU backend only; elsewhere plain autodiff is used. With them off every function here is
    plain jnp, so forward-mode autodiff (jax.jvp) works too.
    """
    return jax.default_backend() == "cpu" if flag is None else bool(flag)


def check_segments(segment_ids, q_shape, k_shape) -> None:
    """Raises ValueError unless segment_ids is None or [B, T] with S == T (documents are
    defined on the query axis and need every key to be a query)."""
    if segment_ids is None:
        return
    if tuple(segment_ids.shape) != tuple(q_shape[:2]) or k_shape[1] != q_shape[1]:
        raise ValueError(
            f"segment_ids must be [B, T] = {list(q_shape[:2])} with S == T, got "
            f"segment_ids {tuple(segment_ids.shape)}, T={q_shape[1]}, S={k_shape[1]}"
        )


def masked_softmax(logits_BHTS: jax.Array, mask: jax.Array, tuned: bool = False) -> jax.Array:
    """Softmax over keys in float32 with disallowed pairs at exactly 0: -> [B, H, T, S].

    A row with no allowed key (never the case under a causal mask) gives all zeros, not NaN.
    tuned: differentiate in terms of the probabilities (a custom JVP; see tuned_vjp).
    """
    logits = logits_BHTS.astype(jnp.float32)
    return _softmax_saved_probs(logits, mask) if tuned else _softmax(logits, mask)


def _softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    logits = jnp.where(mask, logits, -jnp.inf)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    exp = jnp.where(mask, jnp.exp(logits - row_max), 0.0)
    denom = jnp.sum(exp, axis=-1, keepdims=True)
    return exp / jnp.where(denom > 0, denom, 1.0)


_softmax_saved_probs = jax.custom_jvp(_softmax)


@_softmax_saved_probs.defjvp
def _softmax_jvp(primals, tangents):
    # in terms of the probabilities (as jax.nn.softmax): the backward then reads the saved
    # probabilities; autodiff of _softmax recomputed them from the logits inside its row-sum
    # reduction, which XLA:CPU ran slower than the whole backward written this way
    logits, mask = primals
    d_logits = tangents[0]
    probs = _softmax(logits, mask)
    return probs, probs * (d_logits - jnp.sum(probs * d_logits, axis=-1, keepdims=True))


def causal_attention(
    q_BTHD: jax.Array,
    k_BSKD: jax.Array,
    v_BSKD: jax.Array,
    segment_ids: jax.Array | None = None,
    tuned: bool = False,
) -> jax.Array:
    """Plain causal (optionally document-masked) attention: -> [B, T, H, D] (v's dtype).
    tuned: masked_softmax's custom JVP."""
    check_segments(segment_ids, q_BTHD.shape, k_BSKD.shape)
    logits = attention_logits(q_BTHD, k_BSKD)
    mask = causal_mask(q_BTHD.shape[1], k_BSKD.shape[1], segment_ids)
    return weight_values(masked_softmax(logits, mask, tuned), v_BSKD)

"""Convolutions over attention logits or weights (docs/mta.md sections 1 and 2).

Everything acts on [B, H, T, S] arrays (heads, queries, keys) in float32:
- key_query_conv: per-head (depthwise) cross-correlation over (queries, keys), kernel [H, c_q, c_k];
- mix_heads: head mixing, linear [H, H] or grouped [H // c_h, c_h, c_h];
- conv3d_heads: the full 3-D kernel [H // c_h, c_h, c_h, c_q, c_k] over (heads, queries, keys).

Alignment of every (query, key) tap, with r = (c_k - 1) // 2:

    out[h, i, j] = sum_a sum_b theta[h, a, b] * x[h, i - (c_q - 1) + a, j - r + b]

so row a = c_q - 1 is the current query, column b = r the current key; reads outside x are 0.

Documents (segment_ids, [B, T] ints with S == T): a query-axis tap never reads a row of another
document (it reads 0, as if that document were run alone). Key-axis taps are not restricted here:
the caller zeroes cross-document pairs of x first (the causal + document mask), and then every
nonzero x[i', j'] in a row i' of query i's document has j' in that document too. Without the
query-axis rule, packing would leak: for the first query i = s of a document and key j = s, the tap
(a, b) = (c_q - 2, r - 1) reads x[s - 1, s - 1], the (unmasked) diagonal of the previous document.
The leak changes the output before the softmax when c_q >= 3 and c_k >= 3 (row s has a single
allowed key, so its softmax is 1 whatever it reads) and after the softmax when c_q >= 2, c_k >= 3.
"""

import jax
import jax.numpy as jnp
from einops import rearrange
from jax import lax

from mta.attention.core import check_segments
from mta.attention.depthwise import depthwise_conv_valid
from mta.attention.kernels import head_form, kq_taps

_HIGHEST = lax.Precision.HIGHEST


def key_query_conv(
    x_BHTS: jax.Array,
    kernel_HQK: jax.Array,
    segment_ids: jax.Array | None = None,
    tuned: bool = False,
) -> jax.Array:
    """Depthwise key-query convolution: x [B, H, T, S], kernel [H, c_q, c_k] -> [B, H, T, S] f32.

    segment_ids ([B, T], needs S == T): query-axis taps stay inside the query's document.
    tuned: shifted multiply-adds with a written-out VJP (depthwise.py) instead of lax's conv.
    """
    kq_taps(kernel_HQK, x_BHTS.shape[1], "kernel_HQK")
    kernel_OIQK = rearrange(kernel_HQK, "h q k -> h 1 q k")  # one input channel per head
    return _conv_queries_keys(x_BHTS, kernel_OIQK, x_BHTS.shape[1], segment_ids, tuned)


def conv3d_heads(
    x_BHTS: jax.Array,
    kernel_NIOQK: jax.Array,
    segment_ids: jax.Array | None = None,
    tuned: bool = False,
) -> jax.Array:
    """Full 3-D convolution over (heads, queries, keys): x [B, H, T, S] -> [B, H, T, S] f32.

    kernel [H // c_h, c_h (in), c_h (out), c_q, c_k]; inside head group n:
    out[n*c_h + o, i, j] =
        sum_{in, a, b} kernel[n, in, o, a, b] * x[n*c_h + in, i - (c_q-1) + a, j - r + b].
    With kernel[n, in, o, a, b] = W[n, in, o] * theta[n*c_h + in, a, b] it equals
    mix_heads(key_query_conv(x, theta), W). segment_ids as in key_query_conv.
    """
    if head_form(kernel_NIOQK, x_BHTS.shape[1], "kernel_NIOQK", allow_3d=True) != "conv3d":
        raise ValueError(f"kernel_NIOQK must be 5-D, got shape {tuple(kernel_NIOQK.shape)}")
    kernel_OIQK = rearrange(kernel_NIOQK, "n i o q k -> (n o) i q k")
    return _conv_queries_keys(x_BHTS, kernel_OIQK, kernel_NIOQK.shape[0], segment_ids, tuned)


def mix_heads(x_BHTS: jax.Array, weights: jax.Array, tuned: bool = False) -> jax.Array:
    """Head mixing at every (query, key): x [B, H, T, S] -> [B, H, T, S] float32.

    weights [H, H] (linear): new[g] = sum_h W[g, h] x[h];
    weights [H // c_h, c_h, c_h] (grouped, [group, in, out]):
        new[n*c_h + o] = sum_i x[n*c_h + i] W[n, i, o].
    tuned: the product's VJP written out with the weights on the left (_mix_rows).
    """
    head_form(weights, x_BHTS.shape[1], "weights", allow_3d=False)
    batch, heads, num_queries, num_keys = x_BHTS.shape
    weights = weights.astype(jnp.float32)
    # both forms as groups: weights_NOI[n, o, i] (linear: one group, W[g, h] = [o, i])
    weights_NOI = weights[None] if weights.ndim == 2 else jnp.swapaxes(weights, 1, 2)
    num_groups, group = weights_NOI.shape[:2]
    x_BNIX = x_BHTS.astype(jnp.float32).reshape(batch, num_groups, group, -1)
    out_BNOX = (_mix_rows if tuned else _mix_rows_plain)(weights_NOI, x_BNIX)
    return out_BNOX.reshape(batch, heads, num_queries, num_keys)


def _mix_rows_plain(weights_NOI: jax.Array, x_BNIX: jax.Array) -> jax.Array:
    """out[b, n, o, x] = sum_i weights[n, o, i] x[b, n, i, x] -> [B, N, O, X]."""
    weights_BNOI = jnp.broadcast_to(weights_NOI, x_BNIX.shape[:1] + weights_NOI.shape)
    return lax.dot_general(
        weights_BNOI, x_BNIX, (((3,), (2,)), ((0, 1), (0, 1))), precision=_HIGHEST
    )


# [c_h, c_h] @ [c_h, T*S] per (batch, group), weights on the left, forward and backward: with
# the map on the left XLA:CPU produces [T*S, c_h] and transposes it inside the loop that reads
# it (a convolution's), which autodiff of this product does for the input gradient.
_mix_rows = jax.custom_vjp(_mix_rows_plain)


def _mix_rows_forward(weights_NOI, x_BNIX):
    return _mix_rows(weights_NOI, x_BNIX), (weights_NOI, x_BNIX)


def _mix_rows_backward(residuals, d_out_BNOX):
    weights_NOI, x_BNIX = residuals
    d_x_BNIX = _mix_rows(jnp.swapaxes(weights_NOI, 1, 2), d_out_BNOX)
    d_weights_BNOI = lax.dot_general(
        d_out_BNOX, x_BNIX, (((3,), (3,)), ((0, 1), (0, 1))), precision=_HIGHEST
    )
    return d_weights_BNOI.sum(axis=0), d_x_BNIX


_mix_rows.defvjp(_mix_rows_forward, _mix_rows_backward)


def _conv_queries_keys(x_BCTS, kernel_OIQK, groups: int, segment_ids, tuned: bool):
    """Grouped conv with the MTA alignment; document-aware along queries when segment_ids given."""
    x_BCTS = x_BCTS.astype(jnp.float32)
    kernel_OIQK = kernel_OIQK.astype(jnp.float32)
    if segment_ids is None:
        return _conv(x_BCTS, kernel_OIQK, groups, tuned)
    batch, _, num_queries, num_keys = x_BCTS.shape
    c_q = kernel_OIQK.shape[2]
    check_segments(segment_ids, (batch, num_queries), (batch, num_keys))
    # One key-axis conv per query tap a, on rows shifted down by c_q-1-a, rows of another
    # document zeroed: out[i] = sum_a conv_keys(x[i-(c_q-1)+a] * [same document as i], theta[a]).
    out_BOTS = jnp.zeros(x_BCTS.shape[:1] + kernel_OIQK.shape[:1] + x_BCTS.shape[2:], jnp.float32)
    for a in range(c_q):
        shift = c_q - 1 - a
        if shift >= num_queries:
            continue
        rows_BCTS = _shift_rows_within_documents(x_BCTS, segment_ids, shift)
        out_BOTS = out_BOTS + _conv(rows_BCTS, kernel_OIQK[:, :, a : a + 1], groups, tuned)
    return out_BOTS


def _shift_rows_within_documents(x_BCTS, segment_ids_BT, shift: int):
    """rows[..., i, :] = x[..., i - shift, :] if that row exists and is in i's document, else 0."""
    if shift == 0:
        return x_BCTS
    num_queries = x_BCTS.shape[2]
    rows_BCTS = jnp.pad(x_BCTS[:, :, : num_queries - shift], ((0, 0), (0, 0), (shift, 0), (0, 0)))
    prev_ids_BT = jnp.pad(segment_ids_BT[:, : num_queries - shift], ((0, 0), (shift, 0)))
    exists_T = jnp.arange(num_queries) >= shift
    same_doc_BT = (prev_ids_BT == segment_ids_BT) & exists_T
    return jnp.where(same_doc_BT[:, None, :, None], rows_BCTS, 0.0)


def _conv(x_BCTS, kernel_OIQK, groups: int, tuned: bool):
    """Grouped cross-correlation, padding (c_q-1, 0) on queries and (r, r) on keys."""
    c_q, c_k = kernel_OIQK.shape[2:]
    r = (c_k - 1) // 2
    x_BCTS = jnp.pad(x_BCTS, ((0, 0), (0, 0), (c_q - 1, 0), (r, r)))
    return grouped_conv_valid(x_BCTS, kernel_OIQK, groups, tuned)


def grouped_conv_valid(
    x_BCRS: jax.Array, kernel_OIQK: jax.Array, groups: int, tuned: bool = False
) -> jax.Array:
    """Unpadded grouped cross-correlation in float32: x [B, C, R, S], kernel
    [O, C // groups, c_q, c_k] -> [B, O, R - c_q + 1, S - c_k + 1].

    tuned: depthwise kernels (one input channel per group, O == C) run as shifted multiply-adds
    with a written-out VJP (depthwise.py, for XLA:CPU); everything else through lax's conv."""
    x_BCRS = x_BCRS.astype(jnp.float32)
    kernel_OIQK = kernel_OIQK.astype(jnp.float32)
    depthwise = kernel_OIQK.shape[1] == 1 and groups == x_BCRS.shape[1] == kernel_OIQK.shape[0]
    if tuned and depthwise:
        return depthwise_conv_valid(x_BCRS, kernel_OIQK[:, 0])
    return lax.conv_general_dilated(
        x_BCRS,
        kernel_OIQK,
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        feature_group_count=groups,
        precision=_HIGHEST,
    )

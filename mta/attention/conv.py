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

from mta.attention.depthwise import depthwise_conv_valid

_HIGHEST = lax.Precision.HIGHEST


def check_kq_kernel(kernel_HQK, num_heads: int, name: str = "kernel") -> None:
    """Raises ValueError unless the key-query kernel is [num_heads, c_q, c_k] with c_k odd."""
    shape = tuple(jnp.shape(kernel_HQK))
    if len(shape) != 3 or shape[0] != num_heads or min(shape) < 1:
        raise ValueError(f"{name} must have shape [H={num_heads}, c_q, c_k], got {shape}")
    if shape[2] % 2 == 0:
        raise ValueError(f"{name}: c_k (key kernel size) must be odd, got c_k={shape[2]}")


def check_head_kernel(weights, num_heads: int, name: str = "weights", full_3d: bool = False):
    """Raises ValueError unless weights is [H, H] (linear) or [H // c_h, c_h, c_h] (grouped).

    With full_3d, a 5-D [H // c_h, c_h, c_h, c_q, c_k] kernel (c_k odd) is accepted too.
    """
    shape = tuple(jnp.shape(weights))
    allowed = f"[H, H] = [{num_heads}, {num_heads}] (linear) or [H // c_h, c_h, c_h] (grouped)"
    if full_3d:
        allowed += " or [H // c_h, c_h, c_h, c_q, c_k] (3-D)"
    grouped = len(shape) in (3, 5) if full_3d else len(shape) == 3
    if len(shape) == 2 and shape == (num_heads, num_heads):
        return
    if grouped and shape[1] == shape[2] and shape[0] * shape[1] == num_heads and min(shape) >= 1:
        if len(shape) == 5 and shape[4] % 2 == 0:
            raise ValueError(f"{name}: c_k (key kernel size) must be odd, got c_k={shape[4]}")
        return
    raise ValueError(f"{name} must have shape {allowed} with H={num_heads}, got {shape}")


def key_query_conv(
    x_BHTS: jax.Array, kernel_HQK: jax.Array, segment_ids: jax.Array | None = None
) -> jax.Array:
    """Depthwise key-query convolution: x [B, H, T, S], kernel [H, c_q, c_k] -> [B, H, T, S] f32.

    segment_ids ([B, T], needs S == T): query-axis taps stay inside the query's document.
    """
    check_kq_kernel(kernel_HQK, x_BHTS.shape[1], "kernel_HQK")
    kernel_OIQK = rearrange(kernel_HQK, "h q k -> h 1 q k")  # one input channel per head
    return _conv_queries_keys(x_BHTS, kernel_OIQK, x_BHTS.shape[1], segment_ids)


def conv3d_heads(
    x_BHTS: jax.Array, kernel_NIOQK: jax.Array, segment_ids: jax.Array | None = None
) -> jax.Array:
    """Full 3-D convolution over (heads, queries, keys): x [B, H, T, S] -> [B, H, T, S] f32.

    kernel [H // c_h, c_h (in), c_h (out), c_q, c_k]; inside head group n:
    out[n*c_h + o, i, j] =
        sum_{in, a, b} kernel[n, in, o, a, b] * x[n*c_h + in, i - (c_q-1) + a, j - r + b].
    With kernel[n, in, o, a, b] = W[n, in, o] * theta[n*c_h + in, a, b] it equals
    mix_heads(key_query_conv(x, theta), W). segment_ids as in key_query_conv.
    """
    check_head_kernel(kernel_NIOQK, x_BHTS.shape[1], "kernel_NIOQK", full_3d=True)
    if kernel_NIOQK.ndim != 5:
        raise ValueError(f"kernel_NIOQK must be 5-D, got shape {tuple(kernel_NIOQK.shape)}")
    kernel_OIQK = rearrange(kernel_NIOQK, "n i o q k -> (n o) i q k")
    return _conv_queries_keys(x_BHTS, kernel_OIQK, kernel_NIOQK.shape[0], segment_ids)


def mix_heads(x_BHTS: jax.Array, weights: jax.Array) -> jax.Array:
    """Head mixing at every (query, key): x [B, H, T, S] -> [B, H, T, S] float32.

    weights [H, H] (linear): new[g] = sum_h W[g, h] x[h];
    weights [H // c_h, c_h, c_h] (grouped, [group, in, out]):
        new[n*c_h + o] = sum_i x[n*c_h + i] W[n, i, o].
    """
    check_head_kernel(weights, x_BHTS.shape[1], "weights")
    batch, heads, num_queries, num_keys = x_BHTS.shape
    weights = weights.astype(jnp.float32)
    # both forms as groups: weights_NOI[n, o, i] (linear: one group, W[g, h] = [o, i])
    weights_NOI = weights[None] if weights.ndim == 2 else jnp.swapaxes(weights, 1, 2)
    num_groups, group = weights_NOI.shape[:2]
    x_BNIX = x_BHTS.astype(jnp.float32).reshape(batch, num_groups, group, -1)
    out_BNOX = _mix_rows(weights_NOI, x_BNIX)
    return out_BNOX.reshape(batch, heads, num_queries, num_keys)


@jax.custom_vjp
def _mix_rows(weights_NOI: jax.Array, x_BNIX: jax.Array) -> jax.Array:
    """out[b, n, o, x] = sum_i weights[n, o, i] x[b, n, i, x] -> [B, N, O, X].

    [c_h, c_h] @ [c_h, T*S] per (batch, group), weights on the left, forward and backward: with
    the map on the left XLA:CPU produces [T*S, c_h] and transposes it inside the loop that reads
    it (a convolution's, 4x slower), which autodiff of this product does for the input gradient.
    """
    weights_BNOI = jnp.broadcast_to(weights_NOI, x_BNIX.shape[:1] + weights_NOI.shape)
    return lax.dot_general(
        weights_BNOI, x_BNIX, (((3,), (2,)), ((0, 1), (0, 1))), precision=_HIGHEST
    )


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


def _conv_queries_keys(x_BCTS, kernel_OIQK, groups: int, segment_ids):
    """Grouped conv with the MTA alignment; document-aware along queries when segment_ids given."""
    x_BCTS = x_BCTS.astype(jnp.float32)
    kernel_OIQK = kernel_OIQK.astype(jnp.float32)
    if segment_ids is None:
        return _conv(x_BCTS, kernel_OIQK, groups)
    num_queries, c_q = x_BCTS.shape[2], kernel_OIQK.shape[2]
    if segment_ids.shape != (x_BCTS.shape[0], num_queries) or x_BCTS.shape[3] != num_queries:
        raise ValueError(
            f"segment_ids must be [B, T] = {x_BCTS.shape[:1] + x_BCTS.shape[2:3]} with S == T, "
            f"got segment_ids {tuple(segment_ids.shape)} for x {tuple(x_BCTS.shape)}"
        )
    # One key-axis conv per query tap a, on rows shifted down by c_q-1-a, rows of another
    # document zeroed: out[i] = sum_a conv_keys(x[i-(c_q-1)+a] * [same document as i], theta[a]).
    out_BOTS = jnp.zeros(x_BCTS.shape[:1] + kernel_OIQK.shape[:1] + x_BCTS.shape[2:], jnp.float32)
    for a in range(c_q):
        shift = c_q - 1 - a
        if shift >= num_queries:
            continue
        rows_BCTS = _shift_rows_within_documents(x_BCTS, segment_ids, shift)
        out_BOTS = out_BOTS + _conv(rows_BCTS, kernel_OIQK[:, :, a : a + 1], groups)
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


def _conv(x_BCTS, kernel_OIQK, groups: int):
    """Grouped cross-correlation, padding (c_q-1, 0) on queries and (r, r) on keys."""
    c_q, c_k = kernel_OIQK.shape[2:]
    r = (c_k - 1) // 2
    x_BCTS = jnp.pad(x_BCTS, ((0, 0), (0, 0), (c_q - 1, 0), (r, r)))
    return grouped_conv_valid(x_BCTS, kernel_OIQK, groups)


def grouped_conv_valid(x_BCRS: jax.Array, kernel_OIQK: jax.Array, groups: int) -> jax.Array:
    """Unpadded grouped cross-correlation in float32: x [B, C, R, S], kernel
    [O, C // groups, c_q, c_k] -> [B, O, R - c_q + 1, S - c_k + 1].

    Depthwise kernels (one input channel per group, O == C) run as shifted multiply-adds
    (depthwise.py); the others (3-D head kernels) through lax."""
    x_BCRS = x_BCRS.astype(jnp.float32)
    kernel_OIQK = kernel_OIQK.astype(jnp.float32)
    if kernel_OIQK.shape[1] == 1 and groups == x_BCRS.shape[1] == kernel_OIQK.shape[0]:
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

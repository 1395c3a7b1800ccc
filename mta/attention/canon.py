"""Canon layers (Allen-Zhu, "Physics of Language Models: Part 4.1", 2025): a short causal
depthwise convolution over the hidden states, with a residual connection.

    y_t = x_t + sum_{a=0}^{K-1} w[a] * x_{t-K+1+a}          w [K, E]; tap a = K-1 is x_t

(the alignment of MTA's query taps: the last tap is the current token). Positions before the
start, and in a packed row positions of another document, read as 0, so a packed row equals
its documents run alone. Cached decoding keeps the last K-1 inputs (`canon_window`).
"""

import jax
import jax.numpy as jnp


def canon_conv(x_BTE, kernel_KE, segment_ids=None, residual: bool = True) -> jax.Array:
    """x [B, T, E], kernel [K, E], segment_ids [B, T] or None -> [B, T, E] (x's dtype)."""
    taps, num_t = kernel_KE.shape[0], x_BTE.shape[1]
    kernel = kernel_KE.astype(x_BTE.dtype)
    out = x_BTE if residual else jnp.zeros_like(x_BTE)
    for shift in range(taps):  # tap taps - 1 - shift reads x_{t - shift}
        past = jnp.pad(x_BTE, ((0, 0), (shift, 0), (0, 0)))[:, :num_t]
        if segment_ids is not None and shift:
            past_ids = jnp.pad(segment_ids, ((0, 0), (shift, 0)), constant_values=-1)[:, :num_t]
            past = jnp.where((past_ids == segment_ids)[..., None], past, 0)
        out = out + kernel[taps - 1 - shift] * past
    return out


def canon_window(x_BTE, lengths_B, width: int) -> jax.Array:
    """The inputs at positions lengths - width .. lengths - 1 of each row, oldest first, 0
    before position 0: [B, width, E] (the decoding window after a right-padded prompt)."""
    positions_BW = jnp.asarray(lengths_B)[:, None] - width + jnp.arange(width)
    index_BW1 = jnp.clip(positions_BW, 0, x_BTE.shape[1] - 1)[..., None]
    window = jnp.take_along_axis(x_BTE, index_BW1, axis=1)
    return jnp.where((positions_BW >= 0)[..., None], window, 0)


def canon_step(x_B1E, window_BWE, kernel_KE, residual: bool = True):
    """One new token per row after its window of the K-1 previous inputs
    -> (y [B, 1, E], the next window [B, K-1, E])."""
    full_BKE = jnp.concatenate([window_BWE.astype(x_B1E.dtype), x_B1E], axis=1)
    y_B1E = jnp.sum(full_BKE * kernel_KE.astype(x_B1E.dtype), axis=1, keepdims=True)
    return (x_B1E + y_B1E if residual else y_B1E), full_BKE[:, 1:]

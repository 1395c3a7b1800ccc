"""Depthwise 2-D cross-correlation over (queries, keys) as shifted multiply-adds, custom VJP
(the tuned XLA:CPU form; see core.tuned_vjp).

    out[b, h, i, j] = sum_{a < c_q, c < c_k} kernel[h, a, c] * x[b, h, i + a, j + c]

("valid": no padding; callers pad for the MTA alignment). Why not lax.conv_general_dilated: on
CPU XLA runs a depthwise conv over [B, H, T, S] maps at well under 1 GFLOP/s, while the c_q * c_k
shifted multiply-adds fuse into one loop (~15x faster forward at T=1024, H=8, 6 x 11 taps). Plain
autodiff of the shifted adds would keep one T x S cotangent per tap alive (10 GB at T=2048), so
the backward is written out: the input gradient is the same loop with the kernel flipped, and the
kernel gradient is either matrix products over key windows (2-D form, _kernel_grad) or one
pass per query tap that sums all key taps at once (flat form, _tap_sums).
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

_HIGHEST = lax.Precision.HIGHEST


@jax.custom_vjp
def depthwise_conv_valid(x_BHRS: jax.Array, kernel_HQK: jax.Array) -> jax.Array:
    """x [B, H, R, S], kernel [H, c_q, c_k] -> [B, H, R - c_q + 1, S - c_k + 1] (x's dtype)."""
    return _shifted_sum(x_BHRS, kernel_HQK)


def _shifted_sum(x_BHRS, kernel_HQK):
    _, c_q, c_k = kernel_HQK.shape
    rows, cols = x_BHRS.shape[2] - c_q + 1, x_BHRS.shape[3] - c_k + 1
    out = jnp.zeros(x_BHRS.shape[:2] + (rows, cols), x_BHRS.dtype)
    for a in range(c_q):
        for c in range(c_k):
            tap_H = kernel_HQK[:, a, c].astype(x_BHRS.dtype)
            out = out + tap_H[None, :, None, None] * x_BHRS[:, :, a : a + rows, c : c + cols]
    return out


def _forward(x_BHRS, kernel_HQK):
    return _shifted_sum(x_BHRS, kernel_HQK), (x_BHRS, kernel_HQK)


def _backward(residuals, d_out_BHRS):
    x_BHRS, kernel_HQK = residuals
    _, c_q, c_k = kernel_HQK.shape
    # d_x[i, j] = sum_{a, c} kernel[a, c] d_out[i - a, j - c]: the same loop, kernel flipped
    d_out_padded = jnp.pad(d_out_BHRS, ((0, 0), (0, 0), (c_q - 1, c_q - 1), (c_k - 1, c_k - 1)))
    d_x = _shifted_sum(d_out_padded, kernel_HQK[:, ::-1, ::-1])
    return d_x, _kernel_grad(x_BHRS, d_out_BHRS, c_q, c_k).astype(kernel_HQK.dtype)


depthwise_conv_valid.defvjp(_forward, _backward)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv_flat(x_BHL: jax.Array, kernel_HQK: jax.Array, stride: int, out_len: int):
    """The same taps on rows laid end to end: x [B, H, L] holds rows of `stride` values, and

        out[b, h, p] = sum_{a, c} kernel[h, a, c] * x[b, h, p + a * stride + c],  p < out_len

    (needs L >= out_len + (c_q - 1) * stride + c_k - 1). Output column j of a row reads the next
    row when j + c_k - 1 >= stride, so callers keep rows c_k - 1 columns wider than the output
    they use. Why: a consumer that views the map as [.., T * S] (a head-mixing dot) makes XLA
    fuse that reshape into the 2-D loop, which then runs ~4x slower; a flat loop has nothing to
    reshape. -> [B, H, out_len] (x's dtype)."""
    return flat_sum(x_BHL, kernel_HQK, stride, out_len)


def flat_sum(x_BHL, kernel_HQK, stride: int, out_len: int):
    """depthwise_conv_flat without its custom VJP (plain autodiff)."""
    _, c_q, c_k = kernel_HQK.shape
    out = jnp.zeros(x_BHL.shape[:2] + (out_len,), x_BHL.dtype)
    for a in range(c_q):
        for c in range(c_k):
            start = a * stride + c
            tap_H = kernel_HQK[:, a, c].astype(x_BHL.dtype)
            out = out + tap_H[None, :, None] * x_BHL[:, :, start : start + out_len]
    return out


def _flat_forward(x_BHL, kernel_HQK, stride, out_len):
    return flat_sum(x_BHL, kernel_HQK, stride, out_len), (x_BHL, kernel_HQK)


def _flat_backward(stride, out_len, residuals, d_out_BHP):
    x_BHL, kernel_HQK = residuals
    _, c_q, c_k = kernel_HQK.shape
    reach = (c_q - 1) * stride + c_k - 1  # d_x[p] = sum_{a, c} kernel[a, c] d_out[p - a*stride - c]
    tail = max(0, x_BHL.shape[2] - out_len)
    d_out_padded = jnp.pad(d_out_BHP, ((0, 0), (0, 0), (reach, tail)))
    d_x = flat_sum(d_out_padded, kernel_HQK[:, ::-1, ::-1], stride, x_BHL.shape[2])
    d_kernel = _kernel_grad_flat(x_BHL, d_out_BHP, stride, c_q, c_k)
    return d_x, d_kernel.astype(kernel_HQK.dtype)


depthwise_conv_flat.defvjp(_flat_forward, _flat_backward)


def _kernel_grad_flat(x_BHL, d_out_BHP, stride: int, c_q: int, c_k: int):
    """d_kernel[h, a, c] = sum_{b, p} d_out[b, h, p] x[b, h, p + a * stride + c] -> [H, c_q, c_k],
    summed as rows of `stride` positions (d_out zero-padded to whole rows)."""
    batch, heads, out_len = d_out_BHP.shape
    num_rows = -(-out_len // stride)
    d_out_BHRC = jnp.pad(d_out_BHP, ((0, 0), (0, 0), (0, num_rows * stride - out_len)))
    d_out_BHRC = d_out_BHRC.reshape(batch, heads, num_rows, stride)
    needed = (c_q - 1 + num_rows) * stride + c_k - 1
    x_BHL = jnp.pad(x_BHL, ((0, 0), (0, 0), (0, max(0, needed - x_BHL.shape[2]))))

    def shifted(a, c):  # x[p + a * stride + c] at the rows of d_out
        start = a * stride + c
        cut = x_BHL[:, :, start : start + num_rows * stride]
        return cut.reshape(batch, heads, num_rows, stride)

    return _tap_sums(d_out_BHRC, shifted, c_q, c_k)


def _tap_sums(d_out_BHRC, shifted, c_q: int, c_k: int):
    """d_kernel[h, a, c] = sum_{b, r, col} d_out[b, h, r, col] shifted(a, c)[b, h, r, col].

    d_out [B, H, R, C]; shifted(a, c) -> the [B, H, R, C] input that tap (a, c) multiplies.
    -> [H, c_q, c_k].

    One variadic reduce along the rows per query tap a: XLA:CPU runs it as one loop that reads
    d_out once and keeps c_k running sums. The flat form's gradient (whole [T, S] maps, inputs
    materialised): at T=2048, H=8, 6 x 11 taps 0.19 s, against 1.1-1.4 s as matrix products
    over key windows (_kernel_grad) and ~3 s as 66 separate reductions.
    """
    zero = jnp.zeros((), d_out_BHRC.dtype)

    def add(sums, terms):
        return tuple(s + t for s, t in zip(sums, terms, strict=True))

    per_query_tap = []
    for a in range(c_q):
        terms = tuple(d_out_BHRC * shifted(a, c) for c in range(c_k))
        row_sums_BHR = lax.reduce(terms, (zero,) * c_k, add, (3,))
        per_query_tap.append(jnp.stack([s.sum(axis=(0, 2)) for s in row_sums_BHR], axis=-1))
    return jnp.stack(per_query_tap, axis=1)


def _kernel_grad(x_BHRS, d_out_BHTU, c_q: int, c_k: int, width: int = 16):
    """d_kernel[h, a, c] = sum_{b, i, j} d_out[b, h, i, j] x[b, h, i + a, j + c] -> [H, c_q, c_k].

    Keys are cut into windows of `width` output columns (n of them); window n of x holds its
    width + c_k - 1 input columns. For each query tap a, one matrix product contracts batch, rows
    and windows: m_a[h, u, v] = sum_{b, i, n} d_out[b, h, i, n*width + u] x[b, h, i + a,
    n*width + v], and d_kernel[h, a, c] = sum_u m_a[h, u, u + c]. (c_k separate full reductions
    run at memory speed and were 4x slower on CPU.) The 2-D form's inputs are often fused
    producers (a blockwise tile's probabilities), which the flat form's variadic reduce
    (_tap_sums) would recompute per tap; the window matrix is built once (1.3x faster end to end
    on blockwise tiles).
    """
    batch, heads, rows, cols = d_out_BHTU.shape
    width = max(width, c_k - 1)
    num_windows = -(-cols // width)
    padded_cols = num_windows * width
    d_out_HBTNU = jnp.pad(
        jnp.swapaxes(d_out_BHTU, 0, 1), ((0, 0), (0, 0), (0, 0), (0, padded_cols - cols))
    ).reshape(heads, batch, rows * num_windows, width)
    x_HBRS = jnp.swapaxes(x_BHRS, 0, 1)
    x_HBRS = jnp.pad(x_HBRS, ((0, 0),) * 3 + ((0, padded_cols + width - x_HBRS.shape[3]),))
    in_rows = x_HBRS.shape[2]

    def windows(start):  # [H, B, R, n, width] columns start + n*width + u
        cut = x_HBRS[..., start : start + padded_cols]
        return cut.reshape(heads, batch, in_rows, num_windows, width)

    x_windows = jnp.concatenate([windows(0), windows(width)[..., : c_k - 1]], axis=-1)
    x_windows = x_windows.reshape(heads, batch, in_rows * num_windows, width + c_k - 1)
    u_UC, c_UC = jnp.meshgrid(jnp.arange(width), jnp.arange(c_k), indexing="ij")
    grads = []
    for a in range(c_q):  # rows i + a of x, as a contiguous run of windows
        x_a = x_windows[:, :, a * num_windows : (a + rows) * num_windows]
        m_HUV = jnp.einsum("hbku,hbkv->huv", d_out_HBTNU, x_a, precision=_HIGHEST)
        grads.append(jnp.sum(m_HUV[:, u_UC, u_UC + c_UC], axis=1))  # [H, c_k]
    return jnp.stack(grads, axis=1)

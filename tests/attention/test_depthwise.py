"""depthwise_conv_valid against float64 numpy loops: output, input gradient, kernel gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mta.attention.depthwise import depthwise_conv_flat, depthwise_conv_valid


def _reference(x, kernel, d_out):
    """Forward and the VJP with cotangent d_out, one tap at a time in float64."""
    x, kernel, d_out = (np.asarray(a, np.float64) for a in (x, kernel, d_out))
    batch, heads, rows, cols = x.shape
    _, c_q, c_k = kernel.shape
    out = np.zeros((batch, heads, rows - c_q + 1, cols - c_k + 1))
    d_x, d_kernel = np.zeros_like(x), np.zeros_like(kernel)
    for b in range(batch):
        for h in range(heads):
            for i in range(out.shape[2]):
                for j in range(out.shape[3]):
                    for a in range(c_q):
                        for c in range(c_k):
                            out[b, h, i, j] += kernel[h, a, c] * x[b, h, i + a, j + c]
                            d_x[b, h, i + a, j + c] += kernel[h, a, c] * d_out[b, h, i, j]
                            d_kernel[h, a, c] += x[b, h, i + a, j + c] * d_out[b, h, i, j]
    return out, d_x, d_kernel


# (batch, heads, rows, cols, c_q, c_k): 1-tap axes, a key kernel wider than the 16-column
# windows of the 2-D form's kernel gradient, column counts that do and do not fill the last window
@pytest.mark.parametrize(
    "shape",
    [
        (2, 3, 9, 20, 2, 5),
        (1, 2, 12, 40, 6, 11),
        (2, 1, 5, 7, 1, 1),
        (1, 2, 8, 45, 3, 21),
        (1, 2, 7, 33, 4, 1),
    ],
)
def test_matches_float64_loops(shape):
    batch, heads, rows, cols, c_q, c_k = shape
    keys = jax.random.split(jax.random.key(sum(shape)), 3)
    x = jax.random.normal(keys[0], (batch, heads, rows, cols))
    kernel = jax.random.normal(keys[1], (heads, c_q, c_k))
    out, vjp = jax.vjp(depthwise_conv_valid, x, kernel)
    d_out = jax.random.normal(keys[2], out.shape)
    d_x, d_kernel = vjp(d_out)
    want_out, want_d_x, want_d_kernel = _reference(x, kernel, d_out)
    for got, want in ((out, want_out), (d_x, want_d_x), (d_kernel, want_d_kernel)):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-5)


def test_second_call_under_jit_and_grad_of_a_scalar():
    """The custom VJP composes with jit and grad (the way training uses it)."""
    x = jax.random.normal(jax.random.key(0), (1, 2, 6, 10))
    kernel = jax.random.normal(jax.random.key(1), (2, 2, 3))
    loss = jax.jit(jax.grad(lambda x, k: jnp.sum(depthwise_conv_valid(x, k) ** 2), (0, 1)))
    d_x, d_kernel = loss(x, kernel)
    out = depthwise_conv_valid(x, kernel)
    _, want_d_x, want_d_kernel = _reference(x, kernel, 2 * np.asarray(out))
    np.testing.assert_allclose(d_x, want_d_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_kernel, want_d_kernel, rtol=1e-5, atol=1e-5)


# (stride, c_q, c_k, short): outputs of whole rows and (short > 0) ending inside a row
@pytest.mark.parametrize(
    "stride,c_q,c_k,short",
    [(20, 2, 5, 0), (48, 6, 11, 0), (7, 3, 1, 2), (30, 2, 21, 0), (30, 4, 9, 7)],
)
def test_flat_rows_match_float64_loops(stride, c_q, c_k, short):
    """depthwise_conv_flat is the 2-D conv of rows laid end to end, reads past a row's end
    included (the output columns a caller drops)."""
    batch, heads, rows = 2, 3, 6
    out_len = rows * stride - short
    length = out_len + (c_q - 1) * stride + c_k - 1
    keys = jax.random.split(jax.random.key(stride + c_q), 3)
    x = jax.random.normal(keys[0], (batch, heads, length))
    kernel = jax.random.normal(keys[1], (heads, c_q, c_k))
    out, vjp = jax.vjp(lambda x, k: depthwise_conv_flat(x, k, stride, out_len), x, kernel)
    d_out = jax.random.normal(keys[2], out.shape)
    d_x, d_kernel = vjp(d_out)
    # the flat taps are a 2-D valid conv of a [1, length] "image" whose query taps sit `stride`
    # positions apart: a kernel of (c_q - 1) * stride + c_k columns, zero between the taps
    spread = np.zeros((heads, 1, (c_q - 1) * stride + c_k))
    for a in range(c_q):
        spread[:, 0, a * stride : a * stride + c_k] = np.asarray(kernel[:, a])
    want_out, want_d_x, want_d_spread = _reference(
        np.asarray(x)[:, :, None], spread, np.asarray(d_out)[:, :, None]
    )
    want_d_kernel = np.stack(
        [want_d_spread[:, 0, a * stride : a * stride + c_k] for a in range(c_q)], axis=1
    )
    np.testing.assert_allclose(out, want_out[:, :, 0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(d_x, want_d_x[:, :, 0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(d_kernel, want_d_kernel, rtol=1e-5, atol=1e-4)

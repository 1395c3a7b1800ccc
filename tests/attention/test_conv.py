"""The convolution and head-mixing helpers of mta/attention/conv.py (used by the dense and
blockwise impls and by decoding) against the float64 numpy loops of reference.py."""

import jax.numpy as jnp
import numpy as np
import pytest

from mta.attention import conv3d_heads, key_query_conv, mix_heads

from . import reference as ref

RTOL, ATOL = 2e-5, 2e-6


def test_pre_conv_then_grouped_mixing_is_one_3d_conv():
    """key_query_conv then grouped mix_heads == a direct numpy 3-D conv with the factorised kernel
    W[n, in, o] * theta[n*c_h + in, a, b]; and conv3d_heads of that kernel == the same."""
    rng = np.random.default_rng(7)
    heads, c_h, c_q, c_k = 4, 2, 3, 3
    x = rng.normal(size=(2, heads, 6, 6)).astype(np.float32)
    theta = rng.normal(size=(heads, c_q, c_k)).astype(np.float32)
    mix = rng.normal(size=(heads // c_h, c_h, c_h)).astype(np.float32)
    theta_NI = theta.reshape(heads // c_h, c_h, c_q, c_k)
    kernel = mix[:, :, :, None, None] * theta_NI[:, :, None, :, :]  # [n, in, out, c_q, c_k]
    want = ref.conv3d(x, kernel)
    two_steps = mix_heads(key_query_conv(x, theta), mix)
    np.testing.assert_allclose(two_steps, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(conv3d_heads(x, kernel), want, rtol=RTOL, atol=ATOL)


def test_conv3d_heads_unfactorised_matches_loop():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(1, 4, 5, 5)).astype(np.float32)
    kernel = rng.normal(size=(2, 2, 2, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(conv3d_heads(x, kernel), ref.conv3d(x, kernel), rtol=RTOL, atol=ATOL)


def test_kq_conv_and_mixing_match_loop():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 4, 5, 7)).astype(np.float32)
    theta = rng.normal(size=(4, 3, 5)).astype(np.float32)
    linear = rng.normal(size=(4, 4)).astype(np.float32)
    grouped = rng.normal(size=(2, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(
        key_query_conv(x, theta), ref.kq_conv(x, theta), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(mix_heads(x, linear), ref.mix(x, linear), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(mix_heads(x, grouped), ref.mix(x, grouped), rtol=RTOL, atol=ATOL)


def test_grouped_mixing_is_block_diagonal_linear():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(1, 4, 3, 3)).astype(np.float32)
    grouped = rng.normal(size=(2, 2, 2)).astype(np.float32)
    linear = np.zeros((4, 4), np.float32)
    for n in range(2):
        linear[2 * n : 2 * n + 2, 2 * n : 2 * n + 2] = grouped[n].T  # W[n*c+o, n*c+i] = Wg[n,i,o]
    np.testing.assert_allclose(mix_heads(x, grouped), mix_heads(x, linear), rtol=1e-6, atol=1e-6)


def test_helpers_reject_bad_shapes():
    x = jnp.zeros((1, 4, 3, 3))
    with pytest.raises(ValueError, match="c_k"):
        key_query_conv(x, jnp.ones((4, 2, 2)))
    with pytest.raises(ValueError, match="weights"):
        mix_heads(x, jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="5-D"):
        conv3d_heads(x, jnp.ones((2, 2, 2)))

"""Differential attention against the float64 numpy loop of reference.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mta.attention import (
    causal_attention,
    diff_head_norm,
    diff_lambda,
    diff_lambda_init,
    differential_attention,
)

from . import reference as ref

RTOL, ATOL = 2e-5, 2e-6
diff_jit = jax.jit(differential_attention)


def _inputs(seed, heads, kv_heads, num_t=6, num_s=None, dim=3, batch=2, vector_lam=False):
    rng = np.random.default_rng(seed)
    num_s = num_s or num_t
    q = rng.normal(size=(batch, num_t, 2 * heads, dim)).astype(np.float32)
    k = rng.normal(size=(batch, num_s, 2 * kv_heads, dim)).astype(np.float32)
    v = rng.normal(size=(batch, num_s, kv_heads, 2 * dim)).astype(np.float32)
    lam = rng.uniform(0.1, 0.9, size=(heads,) if vector_lam else ()).astype(np.float32)
    return q, k, v, lam


CASES = {
    "mha": dict(heads=2, kv_heads=2),
    "gqa_vector_lambda": dict(heads=4, kv_heads=2, vector_lam=True),
    "mqa": dict(heads=2, kv_heads=1),
    "s_gt_t": dict(heads=2, kv_heads=1, num_t=3, num_s=6, vector_lam=True),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_numpy_loop(case):
    q, k, v, lam = _inputs(0, **CASES[case])
    want = ref.differential_attention(q, k, v, lam)
    np.testing.assert_allclose(diff_jit(q, k, v, lam), want, rtol=RTOL, atol=ATOL)


def test_segments_match_numpy_loop():
    q, k, v, lam = _inputs(1, heads=2, kv_heads=1, num_t=7, vector_lam=True)
    segment_ids = np.array([[0, 0, 0, 1, 1, 1, 1], [3, 3, 4, 4, 4, 5, 5]], np.int32)
    want = ref.differential_attention(q, k, v, lam, segment_ids)
    np.testing.assert_allclose(diff_jit(q, k, v, lam, segment_ids), want, rtol=RTOL, atol=ATOL)


def test_lambda_zero_is_attention_of_first_halves():
    q, k, v, _ = _inputs(2, heads=2, kv_heads=2)
    out = differential_attention(q, k, v, 0.0)
    np.testing.assert_allclose(out, causal_attention(q[:, :, 0::2], k[:, :, 0::2], v), atol=1e-6)


def test_causal_through_gradients():
    q, k, v, lam = _inputs(3, heads=2, kv_heads=1, num_t=5, batch=1)
    jac = jax.jit(jax.jacrev(differential_attention, argnums=(0, 1, 2)))(q, k, v, lam)
    for grad in jac:
        influence = np.abs(np.asarray(grad)).sum(axis=(0, 2, 3, 4, 6, 7))  # [T_out, T_in]
        np.testing.assert_array_equal(np.triu(influence, k=1), 0.0)
        assert np.all(np.diag(influence)[1:] > 0.0)


def test_diff_lambda_and_init():
    rng = np.random.default_rng(4)
    lq1, lk1, lq2, lk2 = (rng.normal(scale=0.1, size=(3, 4)) for _ in range(4))
    got = diff_lambda(lq1, lk1, lq2, lk2, 0.5)
    want = [math.exp(sum(lq1[h] * lk1[h])) - math.exp(sum(lq2[h] * lk2[h])) + 0.5 for h in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert diff_lambda(lq1[0], lk1[0], lq2[0], lk2[0], 0.2).shape == ()
    assert diff_lambda_init(0) == pytest.approx(0.2)
    assert diff_lambda_init(5) == pytest.approx(0.8 - 0.6 * math.exp(-1.5))


def test_diff_head_norm():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 2, 6)).astype(np.float32)
    weight = rng.normal(size=(6,)).astype(np.float32)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-5) * weight * (1 - 0.3)
    np.testing.assert_allclose(diff_head_norm(jnp.asarray(x), weight, 0.3), want, rtol=1e-5)


def test_bad_shapes_raise():
    q, k, v, lam = _inputs(6, heads=2, kv_heads=2)
    with pytest.raises(ValueError, match="2H'"):
        differential_attention(q[:, :, :3], k, v, lam)
    with pytest.raises(ValueError, match="2H'"):
        differential_attention(q, k, v[:, :, :1], lam)

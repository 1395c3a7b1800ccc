"""The pre-softmax key-query convolution computed from q and k (pre_conv.py) equals the literal
convolution of the zero-masked logits, and stays exactly causal."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mta.attention.pre_conv import conv_logits

from . import reference as ref

# (T, S, H, K, c_q, c_k): query-side widening (c_q <= c_k) and key-side (c_q > c_k), the release's
# 6 x 11, 1 x 1 and 1-wide kernels, GQA/MQA, queries that are the last T of S keys, T < c_q.
CASES = [
    (9, 9, 4, 2, 6, 11),
    (8, 8, 2, 2, 4, 1),
    (8, 8, 2, 2, 5, 3),
    (7, 7, 2, 2, 1, 7),
    (6, 6, 2, 2, 1, 1),
    (5, 12, 2, 1, 3, 5),
    (3, 3, 2, 2, 6, 3),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_convolving_the_zero_masked_logits(case):
    num_t, num_s, heads, kv_heads, c_q, c_k = case
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, num_t, heads, 4)).astype(np.float32)
    k = rng.normal(size=(2, num_s, kv_heads, 4)).astype(np.float32)
    theta = rng.normal(size=(heads, c_q, c_k)).astype(np.float32)
    want = ref.zero_mask(ref.kq_conv(ref.zero_mask(ref.logits(q, k)), theta))
    got = ref.zero_mask(np.asarray(jax.jit(conv_logits)(q, k, theta), np.float64))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_no_future_key_reaches_an_allowed_output_through_gradients(case):
    num_t, num_s, heads, kv_heads, c_q, c_k = case
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(1, num_t, heads, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, num_s, kv_heads, 4)), jnp.float32)
    theta = jnp.asarray(rng.normal(size=(heads, c_q, c_k)), jnp.float32)
    causal_TS = np.arange(num_s)[None, :] <= np.arange(num_t)[:, None] + num_s - num_t

    def allowed_outputs(k):
        return jnp.where(causal_TS, conv_logits(q, k, theta), 0.0)

    # d out[i, j] / d k[m]: [B, H, T, S, B, S', K, D] -> influence [T, S']
    influence = np.abs(np.asarray(jax.jacrev(allowed_outputs)(k))).sum(axis=(0, 1, 3, 4, 6, 7))
    for i in range(num_t):
        assert np.all(influence[i, i + num_s - num_t + 1 :] == 0.0), f"query {i} sees the future"

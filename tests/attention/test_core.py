"""mta.attention.core against the float64 numpy loops of reference.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mta.attention import core

from . import reference as ref

RTOL, ATOL = 1e-5, 1e-6
causal_jit = jax.jit(core.causal_attention)  # one compile instead of one per eager op


def _qkv(seed, batch, num_t, num_s, num_h, num_k, dim):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, num_t, num_h, dim)).astype(np.float32)
    k = rng.normal(size=(batch, num_s, num_k, dim)).astype(np.float32)
    v = rng.normal(size=(batch, num_s, num_k, dim)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize(
    "num_t,num_s,num_h,num_k",
    [(7, 7, 4, 4), (7, 7, 4, 2), (7, 7, 4, 1), (3, 8, 4, 2), (1, 6, 2, 1)],
    ids=["mha", "gqa", "mqa", "gqa_s_gt_t", "mqa_one_query"],
)
def test_causal_attention_matches_loop(num_t, num_s, num_h, num_k):
    q, k, v = _qkv(0, 2, num_t, num_s, num_h, num_k, 3)
    out = causal_jit(q, k, v)
    np.testing.assert_allclose(out, ref.causal_attention(q, k, v), rtol=RTOL, atol=ATOL)


def test_causal_attention_segments_match_loop():
    q, k, v = _qkv(1, 2, 8, 8, 4, 2, 3)
    segment_ids = np.array([[0] * 3 + [1] * 5, [4] * 2 + [5] * 4 + [6] * 2])
    out = causal_jit(q, k, v, jnp.asarray(segment_ids))
    want = ref.causal_attention(q, k, v, segment_ids)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)


def test_logits_match_loop_with_offset():
    q, k, _ = _qkv(2, 2, 3, 5, 4, 2, 3)
    np.testing.assert_allclose(core.attention_logits(q, k), ref.logits(q, k), rtol=RTOL, atol=ATOL)


def test_causal_mask_offset():
    mask = np.asarray(core.causal_mask(3, 5))[0, 0]
    want = np.array([[ref.allowed(3, 5, i, j) for j in range(5)] for i in range(3)])
    np.testing.assert_array_equal(mask, want)
    assert mask.sum(axis=1).tolist() == [3, 4, 5]  # query i sits at key position i + S - T


def test_masked_softmax_rows():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 3, 4, 6)).astype(np.float32) * 5
    mask = core.causal_mask(4, 6)
    probs = np.asarray(core.masked_softmax(jnp.asarray(logits), mask))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    assert np.all(probs[..., ~np.asarray(mask)[0, 0]] == 0.0)
    np.testing.assert_allclose(probs, ref.softmax(logits[:, :, :, :]), rtol=RTOL, atol=ATOL)


def test_masked_softmax_empty_row_is_zero_not_nan():
    mask = jnp.zeros((1, 1, 2, 3), bool).at[..., 1, 0].set(True)
    probs = core.masked_softmax(jnp.ones((1, 2, 2, 3)), mask)
    assert np.all(np.isfinite(probs))
    np.testing.assert_array_equal(probs[:, :, 0], 0.0)


@pytest.mark.parametrize("tuned", [False, True])
def test_masked_softmax_jacobian_matches_float64(tuned):
    """d probs / d q through the logits, against float64: d p_ij / d l_im = p_ij (delta_jm - p_im)
    within a row, 0 at masked keys and for the empty row. Computed the way the gradient tests
    do (vmap of the VJP under jit, logits made inside so XLA fuses their producer: one backward
    formula that XLA:CPU miscompiled this way passed every single-cotangent check) and as one
    jitted VJP."""
    rng = np.random.default_rng(4)
    q = rng.normal(size=(2, 8, 4, 3)).astype(np.float32)
    k = rng.normal(size=(2, 8, 4, 3)).astype(np.float32)
    mask = core.causal_mask(8, 8).at[..., 0, :].set(False)  # row 0 empty

    def probs_of(q):
        return core.masked_softmax(core.attention_logits(q, k), mask, tuned)

    @jax.jit
    def jacobian(q):
        out, vjp = jax.vjp(probs_of, q)
        basis = jnp.eye(out.size, dtype=out.dtype).reshape(out.size, *out.shape)
        return jax.vmap(vjp)(basis)[0].reshape(out.shape + q.shape)

    allowed = np.broadcast_to(np.asarray(mask), (2, 4, 8, 8))
    d_logits_d_q = np.asarray(k, np.float64) / np.sqrt(
        3
    )  # l[b,h,i,m] = q[b,i,h] . k[b,m,h] / sqrt(D)
    logits = np.einsum("bihd,bmhd->bhim", q.astype(np.float64), d_logits_d_q)
    exp = np.where(allowed, np.exp(logits - logits.max(-1, keepdims=True)), 0.0)
    probs = exp / np.maximum(exp.sum(-1, keepdims=True), 1e-300)
    want = np.zeros((2, 4, 8, 8) + q.shape)  # [B, H, T, S, B, T, H, D]
    for b, h, i, j, m in np.ndindex(2, 4, 8, 8, 8):
        d_p_d_l = probs[b, h, i, j] * ((j == m) - probs[b, h, i, m])
        want[b, h, i, j, b, i, h] += d_p_d_l * d_logits_d_q[b, m, h]
    np.testing.assert_allclose(jacobian(q), want, rtol=1e-4, atol=1e-5)
    cotangent = rng.normal(size=want.shape[:4]).astype(np.float32)
    grad = jax.jit(lambda q: jax.vjp(probs_of, q)[1](cotangent)[0])(q)
    np.testing.assert_allclose(grad, np.einsum("bhij,bhijBTHD->BTHD", cotangent, want), atol=1e-4)


def test_check_heads_rejects_non_divisor():
    with pytest.raises(ValueError, match="must divide"):
        core.check_heads(4, 3)


def test_causal_attention_causal_through_gradients():
    """d out[:, i] / d (q, k, v)[:, j] is exactly 0 for j > i (and for other documents)."""
    q, k, v = _qkv(4, 1, 6, 6, 4, 2, 3)
    segment_ids = jnp.array([[0, 0, 0, 0, 1, 1]])
    allowed = np.tril(np.ones((6, 6), bool)) & (segment_ids[0, :, None] == segment_ids[0, None])
    jac = jax.jit(jax.jacrev(core.causal_attention, argnums=(0, 1, 2)))(q, k, v, segment_ids)
    for grad in jac:
        influence = np.abs(np.asarray(grad)).sum(axis=(0, 2, 3, 4, 6, 7))  # [T_out, T_in]
        np.testing.assert_array_equal(influence[~allowed], 0.0)
    assert np.all(np.abs(np.asarray(jac[2])).sum(axis=(0, 2, 3, 4, 6, 7))[allowed] > 0.0)

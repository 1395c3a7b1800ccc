"""Cached decoding (mta/attention/decode.py) against the reference impl at every position.

Each row of a batch gets its own prompt length; the prompt is right-padded with noise (which the
cache must ignore), then every further position is fed one token per step. Prefill outputs at
positions < length and each step's output must equal the reference forward over the whole sequence.
"""

from dataclasses import dataclass
from functools import partial

import jax
import numpy as np
import pytest

from mta.attention import differential_attention, multi_token_attention
from mta.attention.decode import (
    decode_step,
    diff_decode_step,
    diff_prefill,
    prefill,
    recompute_step,
)

from .kernels import random_kernels

MAX_REL_ERR = 1e-5
LENGTHS = np.array([2, 5, 3, 1])  # prompt length per row; T = 5
NUM_STEPS = 6  # decode steps after the prompt; sequences are max(LENGTHS) + NUM_STEPS long
MAX_LEN = int(LENGTHS.max()) + NUM_STEPS + 2  # room to spare: positions past the end stay unused

prefill_jit = jax.jit(prefill, static_argnames="max_len")
step_jit = jax.jit(decode_step)
dense_jit = jax.jit(partial(multi_token_attention, impl="reference"))
recompute_jit = jax.jit(recompute_step)


@dataclass(frozen=True)
class Combo:
    """pre/post: (c_q, c_k) of kq_pre/kq_post; head_pre: None | "linear" | c_h | ("3d", c_h,
    c_q, c_k); head_post: c_h of grouped post mixing."""

    name: str
    heads: int = 4
    kv_heads: int = 4
    pre: tuple | None = None
    head_pre: object = None
    post: tuple | None = None
    head_post: int | None = None

    def __str__(self):
        return self.name


COMBOS = [
    Combo("main_mha", pre=(3, 5), head_pre="linear", post=(2, 3), head_post=2),
    Combo("grouped_gqa", kv_heads=2, pre=(2, 1), head_pre=2, post=(3, 5), head_post=4),
    Combo("cq1_mqa", kv_heads=1, pre=(1, 3), post=(1, 5), head_post=2),
    Combo("pre_linear_ck1_gqa", kv_heads=2, pre=(3, 1), head_pre="linear"),
    Combo("post_only_mqa", heads=2, kv_heads=1, post=(3, 3)),
    Combo("conv3d_post_gqa", kv_heads=2, head_pre=("3d", 2, 3, 3), post=(2, 5), head_post=2),
    Combo("talking_heads", head_pre=4, head_post=4),
    Combo("plain_gqa", kv_heads=2),
]


def _sequences(rng, heads, kv_heads, dim=4, k_heads=None, v_dim=None):
    """Random q [B, N, heads, dim], k [B, N, k_heads, dim], v [B, N, kv_heads, v_dim]."""
    shape = (len(LENGTHS), int(LENGTHS.max()) + NUM_STEPS)
    q = rng.normal(size=(*shape, heads, dim)).astype(np.float32)
    k = rng.normal(size=(*shape, k_heads or kv_heads, dim)).astype(np.float32)
    v = rng.normal(size=(*shape, kv_heads, v_dim or dim)).astype(np.float32)
    return q, k, v


def _prompt(rng, x_BNXD):
    """The padded prompt [B, T, ...]: row b's first LENGTHS[b] entries, then noise."""
    prompt = x_BNXD[:, : LENGTHS.max()].copy()
    for b, length in enumerate(LENGTHS):
        prompt[b, length:] = rng.normal(size=prompt[b, length:].shape) * 100
    return prompt


def _incremental(q, k, v, run_prefill, run_step):
    """Outputs at every position [B, N, H, D'] from prefill + one step per further position."""
    rng = np.random.default_rng(99)
    out_BTHD, cache = run_prefill(_prompt(rng, q), _prompt(rng, k), _prompt(rng, v))
    out = np.full((*q.shape[:2], out_BTHD.shape[2], out_BTHD.shape[3]), np.nan, np.float32)
    rows = np.arange(len(LENGTHS))
    for b, length in enumerate(LENGTHS):
        out[b, :length] = out_BTHD[b, :length]
    for step in range(NUM_STEPS):
        pos_B = LENGTHS + step
        np.testing.assert_array_equal(cache.lengths, pos_B)
        new = [x[rows, pos_B][:, None] for x in (q, k, v)]
        out_B1HD, cache = run_step(*new, cache)
        out[rows, pos_B] = out_B1HD[:, 0]
    return out, cache


def _run_mta(q, k, v, kernels):
    return _incremental(
        q,
        k,
        v,
        lambda q, k, v: prefill_jit(q, k, v, LENGTHS, max_len=MAX_LEN, **kernels),
        lambda q, k, v, cache: step_jit(q, k, v, cache, **kernels),
    )


def _compare(got, want):
    """Max relative error over positions each row computed (rows end at LENGTHS + NUM_STEPS)."""
    for b, length in enumerate(LENGTHS):
        end = length + NUM_STEPS
        err = np.abs(got[b, :end] - want[b, :end]).max() / np.abs(want[b, :end]).max()
        assert err < MAX_REL_ERR, f"row {b}: relative error {err:.2e}"


@pytest.mark.parametrize("combo", COMBOS, ids=str)
def test_prefill_and_steps_equal_reference_at_every_position(combo):
    rng = np.random.default_rng(0)
    q, k, v = _sequences(rng, combo.heads, combo.kv_heads)
    kernels = random_kernels(combo, rng)
    got, cache = _run_mta(q, k, v, kernels)
    _compare(got, np.asarray(dense_jit(q, k, v, **kernels)))
    # the cache's layout: kv heads only, windows of c_q - 1 rows, nothing past each row's length
    pre_taps = combo.pre[0] if combo.pre else 1
    if isinstance(combo.head_pre, tuple):
        pre_taps = combo.head_pre[2]
    post_taps = combo.post[0] if combo.post else 1
    batch, heads = len(LENGTHS), combo.heads
    assert cache.k.shape == (batch, combo.kv_heads, MAX_LEN, q.shape[3])
    assert cache.logit_rows.shape == (batch, heads, pre_taps - 1, MAX_LEN)
    assert cache.prob_rows.shape == (batch, heads, post_taps - 1, MAX_LEN)
    for b, length in enumerate(cache.lengths):
        assert not np.any(cache.k[b, :, length:]) and not np.any(cache.v[b, :, length:])


def test_windows_matter():
    """Decoding with emptied windows changes the output, so the test above can catch a wrong
    window (a sanity check that the kernels' past-query taps are exercised)."""
    combo = COMBOS[0]
    rng = np.random.default_rng(1)
    q, k, v = _sequences(rng, combo.heads, combo.kv_heads)
    kernels = random_kernels(combo, rng)
    _, cache = prefill_jit(q[:, :5], k[:, :5], v[:, :5], LENGTHS, max_len=MAX_LEN, **kernels)
    rows = np.arange(len(LENGTHS))
    new = [x[rows, LENGTHS][:, None] for x in (q, k, v)]
    want, _ = step_jit(*new, cache, **kernels)
    for field in ("logit_rows", "prob_rows"):
        emptied = cache._replace(**{field: 0 * getattr(cache, field)})
        got, _ = step_jit(*new, emptied, **kernels)
        assert np.abs(np.asarray(got) - np.asarray(want)).max() > 1e-3, field


def test_recompute_step_equals_cached_step():
    combo = COMBOS[0]
    rng = np.random.default_rng(2)
    q, k, v = _sequences(rng, combo.heads, combo.kv_heads)
    kernels = random_kernels(combo, rng)
    got, _ = _run_mta(q, k, v, kernels)
    pos_B = LENGTHS + 2
    want = recompute_jit(q, k, v, pos_B + 1, **kernels)
    np.testing.assert_allclose(
        got[np.arange(len(LENGTHS)), pos_B], want[:, 0], rtol=2e-5, atol=2e-6
    )


def test_mismatched_cache_windows_raise():
    combo = COMBOS[0]
    rng = np.random.default_rng(3)
    q, k, v = _sequences(rng, combo.heads, combo.kv_heads)
    kernels = random_kernels(combo, rng)
    _, cache = prefill_jit(q[:, :5], k[:, :5], v[:, :5], LENGTHS, max_len=MAX_LEN, **kernels)
    new = [x[:, :1] for x in (q, k, v)]
    with pytest.raises(ValueError, match="cache windows"):
        decode_step(*new, cache, kq_pre=kernels["kq_pre"][:, :2])


@pytest.mark.parametrize("heads,kv_heads,vector_lam", [(4, 2, True), (2, 1, False)])
def test_diff_prefill_and_steps_equal_dense(heads, kv_heads, vector_lam):
    rng = np.random.default_rng(4)
    q, k, v = _sequences(rng, 2 * heads, kv_heads, k_heads=2 * kv_heads, v_dim=8)
    lam = rng.uniform(0.1, 0.9, size=(heads,) if vector_lam else ()).astype(np.float32)
    max_len = MAX_LEN
    got, cache = _incremental(
        q,
        k,
        v,
        jax.jit(lambda q, k, v: diff_prefill(q, k, v, lam, LENGTHS, max_len)),
        jax.jit(lambda q, k, v, cache: diff_decode_step(q, k, v, cache, lam)),
    )
    assert got.shape == (*q.shape[:2], heads, 8)
    _compare(got, np.asarray(differential_attention(q, k, v, lam)))
    np.testing.assert_array_equal(cache.lengths, LENGTHS + NUM_STEPS)

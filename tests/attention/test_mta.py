"""The reference impl and the conv helpers against the float64 numpy loops of reference.py.

Compiling dominates the run time (output + Jacobian are compiled once per combination and shared
by the tests), so COMBOS is a covering set rather than a full product: pre/post key-query conv,
linear/grouped/3-D pre mixing, grouped post mixing, MHA/GQA/MQA, c_q in {1, 2, 3},
c_k in {1, 3, 5, 9}, c_h in {1, 2, H}, packed documents, S > T.
"""

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mta.attention import (
    attention_weights,
    causal_attention,
    key_query_conv,
    multi_token_attention,
)

from . import reference as ref

RTOL, ATOL = 2e-5, 2e-6
# Compiled once per combination. Different fusions or shapes round float32 differently (an ulp or
# so), which is why "exactly equal" tests below use tolerances near float32 epsilon.
mta_jit = jax.jit(partial(multi_token_attention, impl="reference"))
causal_jit = jax.jit(causal_attention)


@dataclass(frozen=True)
class Combo:
    """One MTA configuration. head_pre: None | "linear" | c_h | ("3d", c_h, c_q, c_k)."""

    name: str
    heads: int = 4
    kv_heads: int = 4
    pre: tuple | None = None  # (c_q, c_k) of kq_pre
    head_pre: object = None
    post: tuple | None = None  # (c_q, c_k) of kq_post
    head_post: int | None = None  # c_h of the grouped post mixing
    segments: bool = False
    num_t: int = 8
    num_s: int | None = None
    dim: int = 3

    def __str__(self):
        return self.name


COMBOS = [
    Combo("pre_mha", pre=(2, 3)),
    Combo("pre_cq1_ck5_seg", pre=(1, 5), segments=True),
    Combo("pre_cq3_ck1_gqa_seg", kv_heads=2, pre=(3, 1), segments=True),
    Combo("post_cq3_ck5_mqa_seg", kv_heads=1, post=(3, 5), segments=True),
    Combo("pre_post_gqa_seg", kv_heads=2, pre=(3, 3), post=(2, 5), segments=True),
    Combo("pre_linear", pre=(2, 3), head_pre="linear"),
    Combo("pre_linear_mqa_seg", kv_heads=1, pre=(3, 5), head_pre="linear", segments=True),
    Combo("linear_only", head_pre="linear"),
    Combo("pre_grouped_ch2_gqa_seg", kv_heads=2, pre=(2, 3), head_pre=2, segments=True),
    Combo("pre_grouped_chH", pre=(1, 3), head_pre=4),
    Combo("post_mix_only_chH_seg", head_post=4, segments=True),
    Combo("post_grouped_ch2_gqa_seg", kv_heads=2, post=(3, 3), head_post=2, segments=True),
    Combo("post_grouped_ch1_mqa", heads=2, kv_heads=1, post=(2, 5), head_post=1),
    Combo(
        "main_setting_seg", pre=(3, 5), head_pre="linear", post=(3, 5), head_post=4, segments=True
    ),
    Combo(
        "all_grouped_gqa_seg",
        kv_heads=2,
        pre=(2, 3),
        head_pre=2,
        post=(2, 3),
        head_post=2,
        segments=True,
    ),
    Combo("conv3d_ch2", head_pre=("3d", 2, 2, 3)),
    Combo("conv3d_chH_gqa_seg", kv_heads=2, head_pre=("3d", 4, 3, 5), segments=True),
    Combo(
        "conv3d_ch1_post_seg",
        heads=2,
        kv_heads=2,
        head_pre=("3d", 1, 2, 3),
        post=(2, 3),
        head_post=2,
        segments=True,
    ),
    Combo("toy_ck9_seg", heads=2, kv_heads=2, pre=(2, 9), segments=True, num_t=9),
    Combo(
        "s_gt_t_gqa",
        kv_heads=2,
        pre=(3, 3),
        head_pre="linear",
        post=(2, 3),
        head_post=2,
        num_t=4,
        num_s=8,
    ),
    Combo("one_query_mqa", kv_heads=1, pre=(2, 3), post=(2, 3), num_t=1, num_s=5),
]
PACKABLE = [c for c in COMBOS if c.num_s is None]


def _kernels(combo: Combo, rng=None):
    """Random non-identity kernels (rng given) or identity kernels (rng None), as numpy float32."""
    h = combo.heads

    def draw(shape, identity):
        if rng is None:
            return identity.astype(np.float32)
        return rng.normal(scale=0.5, size=shape).astype(np.float32)

    def kq(c_q, c_k):
        eye = np.zeros((h, c_q, c_k))
        eye[:, c_q - 1, (c_k - 1) // 2] = 1.0
        return draw(eye.shape, eye)

    def grouped(c_h):
        eye = np.broadcast_to(np.eye(c_h), (h // c_h, c_h, c_h))
        return draw(eye.shape, eye)

    kernels = {}
    if combo.pre is not None:
        kernels["kq_pre"] = kq(*combo.pre)
    if combo.head_pre == "linear":
        kernels["head_pre"] = draw((h, h), np.eye(h))
    elif isinstance(combo.head_pre, tuple):
        _, c_h, c_q, c_k = combo.head_pre
        eye = np.zeros((h // c_h, c_h, c_h, c_q, c_k))
        eye[:, :, :, c_q - 1, (c_k - 1) // 2] = np.eye(c_h)
        kernels["head_pre"] = draw(eye.shape, eye)
    elif combo.head_pre is not None:
        kernels["head_pre"] = grouped(combo.head_pre)
    if combo.post is not None:
        kernels["kq_post"] = kq(*combo.post)
    if combo.head_post is not None:
        kernels["head_post"] = grouped(combo.head_post)
    return kernels


def _random_segments(rng, batch, num_t):
    """[B, T] ids of 2-3 contiguous documents per row, each at least 1 long."""
    rows = []
    for _ in range(batch):
        num_docs = int(rng.integers(2, 4))
        cuts = np.sort(rng.choice(np.arange(1, num_t), size=num_docs - 1, replace=False))
        rows.append(np.searchsorted(cuts, np.arange(num_t), side="right") + 7 * len(rows))
    return np.stack(rows).astype(np.int32)


def _inputs(combo: Combo, seed: int, batch: int = 2):
    rng = np.random.default_rng(seed)
    num_s = combo.num_s or combo.num_t
    q = rng.normal(size=(batch, combo.num_t, combo.heads, combo.dim)).astype(np.float32)
    k = rng.normal(size=(batch, num_s, combo.kv_heads, combo.dim)).astype(np.float32)
    v = rng.normal(size=(batch, num_s, combo.kv_heads, combo.dim)).astype(np.float32)
    segment_ids = _random_segments(rng, batch, combo.num_t) if combo.segments else None
    return q, k, v, _kernels(combo, rng), segment_ids


@jax.jit
def output_and_jacobian(q, k, v, kernels, segment_ids):
    """MTA output and d out / d (q, k, v) ([*out.shape, *input.shape] each), in one compile."""

    def attend(q, k, v):
        return multi_token_attention(q, k, v, segment_ids=segment_ids, **kernels, impl="reference")

    out, vjp = jax.vjp(attend, q, k, v)
    basis = jnp.eye(out.size, dtype=out.dtype).reshape(out.size, *out.shape)
    return out, [g.reshape(out.shape + g.shape[1:]) for g in jax.vmap(vjp)(basis)]


def attend_compiled(combo, q, k, v, kernels, segment_ids):
    """Forward pass reusing the combination's compiled output_and_jacobian when it has one."""
    if combo.segments == (segment_ids is not None) and q.shape[0] == 2:
        return np.asarray(output_and_jacobian(q, k, v, kernels, segment_ids)[0])
    return np.asarray(mta_jit(q, k, v, segment_ids=segment_ids, **kernels))


@pytest.mark.parametrize("combo", COMBOS, ids=str)
def test_matches_numpy_loop(combo):
    q, k, v, kernels, segment_ids = _inputs(combo, seed=0)
    out, _ = output_and_jacobian(q, k, v, kernels, segment_ids)
    want = ref.multi_token_attention(q, k, v, segment_ids=segment_ids, **kernels)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("combo", [c for c in COMBOS if not c.segments], ids=str)
def test_attention_weights_match_numpy_loop(combo):
    q, k, _, kernels, _ = _inputs(combo, seed=1)
    got = jax.jit(attention_weights)(q, k, **kernels)
    np.testing.assert_allclose(got, ref.attention_weights(q, k, **kernels), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("combo", COMBOS, ids=str)
def test_causal_and_document_local_through_gradients(combo):
    """d out[b, i] / d (q, k, v)[b', j] is exactly 0 unless b == b', j <= i and same document."""
    q, k, v, kernels, segment_ids = _inputs(combo, seed=2)
    _, jac = output_and_jacobian(q, k, v, kernels, segment_ids)
    batch, num_t, num_s = q.shape[0], q.shape[1], k.shape[1]
    allowed_BTS = _allowed(batch, num_t, num_s, segment_ids)
    # query t sits at key position t + S - T, so q's allowed inputs are the last T key columns
    inputs = {"q": allowed_BTS[:, :, num_s - num_t :], "k": allowed_BTS, "v": allowed_BTS}
    for (name, allowed_BTX), grad in zip(inputs.items(), jac, strict=True):
        # [B,T,H,D, B',X,H',D'] -> influence [B, T, B', X] of input position (b', x) on (b, t)
        influence = np.abs(np.asarray(grad)).sum(axis=(2, 3, 6, 7))
        for b in range(batch):
            for b2 in range(batch):
                allowed = allowed_BTX[b] if b == b2 else np.zeros_like(allowed_BTX[b])
                assert np.all(influence[b, :, b2][~allowed] == 0.0), (name, b, b2)
            if name == "v":  # and every allowed value position does contribute
                assert np.all(influence[b, :, b][allowed_BTX[b]] > 0.0)


def _allowed(batch, num_t, num_s, segment_ids):
    key_pos = np.arange(num_s)[None, :]
    query_pos = np.arange(num_t)[:, None] + num_s - num_t
    allowed = np.broadcast_to(key_pos <= query_pos, (batch, num_t, num_s))
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])
    return allowed


@pytest.mark.parametrize("combo", COMBOS, ids=str)
def test_identity_kernels_equal_causal_attention(combo):
    q, k, v, _, segment_ids = _inputs(combo, seed=1)
    out = attend_compiled(combo, q, k, v, _kernels(combo), segment_ids)
    np.testing.assert_allclose(out, causal_jit(q, k, v, segment_ids), rtol=1e-6, atol=3e-7)


def test_identity_kernels_bit_exact_eagerly():
    """Op by op (no jit fusion) the identity-initialised MTA is bit-for-bit causal attention."""
    combo = Combo("main", pre=(3, 5), head_pre="linear", post=(3, 5), head_post=2, segments=True)
    q, k, v, _, segment_ids = _inputs(combo, seed=1)
    out = multi_token_attention(q, k, v, segment_ids=segment_ids, **_kernels(combo))
    np.testing.assert_array_equal(out, causal_attention(q, k, v, segment_ids))


@pytest.mark.parametrize("combo", PACKABLE, ids=str)
def test_packed_rows_equal_documents_run_alone(combo):
    """Rows packed with equal-length documents (T=8: 4+4, T=9: 3+3+3) against every document run
    alone as its own row (one batch, one compile). Uneven random packings are checked against the
    numpy loop, which itself runs each document alone."""
    q, k, v, kernels, _ = _inputs(combo, seed=3)
    doc_len = {8: 4, 9: 3}[combo.num_t]
    segment_ids = np.broadcast_to(np.arange(combo.num_t) // doc_len, q.shape[:2]).astype(np.int32)
    packed = attend_compiled(combo, q, k, v, kernels, segment_ids)

    def docs(x):  # [B, T, ...] -> [B * T / L, L, ...]: every document as its own row
        return x.reshape(-1, doc_len, *x.shape[2:])

    alone = np.asarray(mta_jit(docs(q), docs(k), docs(v), **kernels))
    np.testing.assert_allclose(docs(packed), alone, rtol=1e-5, atol=1e-6)


def test_packing_needs_the_query_tap_rule():
    """Without document-aware query taps the first query of a document would read the previous
    document's diagonal (x[s-1, s-1]) through tap (c_q - 2, r - 1): check the rule matters."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(1, 1, 4, 4)), jnp.float32)
    segment_ids = jnp.array([[0, 0, 1, 1]])
    mask = np.asarray(ref.zero_mask(np.ones((1, 1, 4, 4)))) * (
        np.asarray(segment_ids)[0, :, None] == np.asarray(segment_ids)[0, None, :]
    )
    x = x * mask
    theta = jnp.zeros((1, 2, 3)).at[0, 0, 0].set(1.0)  # reads x[i - 1, j - 1]
    naive = key_query_conv(x, theta)
    aware = key_query_conv(x, theta, segment_ids)
    assert naive[0, 0, 2, 2] == x[0, 0, 1, 1] != 0.0
    assert aware[0, 0, 2, 2] == 0.0
    np.testing.assert_array_equal(aware[0, 0, 3], naive[0, 0, 3])


GRAD_COMBOS = [
    Combo(
        "g_pre_post_all_mixing_seg",
        kv_heads=2,
        pre=(2, 3),
        head_pre="linear",
        post=(2, 3),
        head_post=2,
        segments=True,
        num_t=5,
        dim=2,
    ),
    Combo("g_grouped_pre_mqa", kv_heads=1, pre=(3, 3), head_pre=2, num_t=5, dim=2),
    Combo("g_post_only", heads=2, kv_heads=2, post=(3, 5), head_post=1, num_t=5, dim=2),
    Combo(
        "g_conv3d_seg", heads=2, kv_heads=1, head_pre=("3d", 2, 2, 3), segments=True, num_t=5, dim=2
    ),
    Combo("g_s_gt_t", kv_heads=2, pre=(2, 3), post=(2, 1), head_post=4, num_t=3, num_s=5, dim=2),
]


@pytest.mark.parametrize("combo", GRAD_COMBOS, ids=str)
def test_gradients_match_numpy_finite_differences(combo):
    """Directional derivatives of <C, out> along random directions, for q, k, v and each kernel."""
    q, k, v, kernels, segment_ids = _inputs(combo, seed=5, batch=1)
    args = {"q": q, "k": k, "v": v, **kernels}
    rng = np.random.default_rng(6)
    cotangent = rng.normal(size=(1, combo.num_t, combo.heads, combo.dim))

    def loss(a):
        out = multi_token_attention(segment_ids=segment_ids, **a, impl="reference")
        return jnp.sum(out * cotangent)

    grads = jax.jit(jax.grad(loss))(args)

    def loss_ref(a):
        return float(np.sum(ref.multi_token_attention(segment_ids=segment_ids, **a) * cotangent))

    eps = 1e-4
    for name, value in args.items():
        direction = rng.normal(size=value.shape)
        plus = {**args, name: value.astype(np.float64) + eps * direction}
        minus = {**args, name: value.astype(np.float64) - eps * direction}
        finite_diff = (loss_ref(plus) - loss_ref(minus)) / (2 * eps)
        analytic = float(np.sum(np.asarray(grads[name], np.float64) * direction))
        np.testing.assert_allclose(analytic, finite_diff, rtol=1e-4, atol=1e-5, err_msg=name)


def _small():
    rng = np.random.default_rng(11)
    q = jnp.asarray(rng.normal(size=(1, 4, 4, 2)), jnp.float32)
    kv = jnp.asarray(rng.normal(size=(1, 4, 2, 2)), jnp.float32)
    return q, kv, kv


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kq_pre": jnp.ones((4, 2, 2))}, "c_k"),
        ({"kq_post": jnp.ones((4, 1, 4))}, "c_k"),
        ({"head_pre": jnp.ones((2, 2, 2, 2, 2))}, "c_k"),
        ({"kq_pre": jnp.ones((3, 2, 3))}, "kq_pre"),
        ({"kq_pre": jnp.ones((4, 3))}, "kq_pre"),
        ({"head_pre": jnp.ones((4, 3))}, "head_pre"),
        ({"head_pre": jnp.ones((3, 2, 2))}, "head_pre"),
        ({"head_pre": jnp.ones((2, 2, 3))}, "head_pre"),
        ({"head_post": jnp.ones((2, 2, 2, 1, 1))}, "head_post"),
        ({"head_post": jnp.ones((1, 3, 3))}, "head_post"),
        ({"kq_pre": jnp.ones((4, 1, 1)), "head_pre": jnp.ones((2, 2, 2, 1, 1))}, "replaces kq_pre"),
        ({"kq_pre": jnp.ones((4, 1, 1)), "impl": "flash"}, "impl must be one of"),
        ({"kq_pre": jnp.ones((4, 1, 1)), "segment_ids": jnp.zeros((1, 3), jnp.int32)}, "segment"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        multi_token_attention(*_small(), **kwargs)

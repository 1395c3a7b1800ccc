"""The transformer: its pieces against numpy, its parameter count, and causality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mta.config import load_config
from mta.model import Transformer, apply_rope, count_params, project, rms_norm
from mta.resolve import resolve_model


def test_rms_norm_matches_numpy():
    x = np.random.default_rng(0).normal(size=(3, 5, 8))
    w = np.random.default_rng(1).normal(size=(8,))
    expected = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(rms_norm(jnp.asarray(x, jnp.float32), w, 1e-5), expected, rtol=1e-5)


@pytest.mark.parametrize("tuned", [True, False])
@pytest.mark.parametrize(
    "x_shape, w_shape, num_in", [((2, 3, 4), (4, 2, 5), 1), ((2, 3, 2, 5), (2, 5, 4), 2)]
)
def test_project_and_its_gradients_match_float64_loops(x_shape, w_shape, num_in, tuned):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=x_shape), rng.normal(size=w_shape)
    batch_shape, in_shape, out_shape = x_shape[:-num_in], w_shape[:num_in], w_shape[num_in:]
    g = rng.normal(size=batch_shape + out_shape)
    out, dx, dw = np.zeros(g.shape), np.zeros(x.shape), np.zeros(w.shape)
    for b in np.ndindex(batch_shape):
        for i in np.ndindex(in_shape):
            for o in np.ndindex(out_shape):
                out[b + o] += x[b + i] * w[i + o]
                dx[b + i] += g[b + o] * w[i + o]
                dw[i + o] += x[b + i] * g[b + o]
    x32, w32 = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
    got, vjp = jax.vjp(lambda x, w: project(x, w, num_in, tuned), x32, w32)
    got_dx, got_dw = jax.jit(vjp)(jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(got, out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_dx, dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_dw, dw, rtol=1e-5, atol=1e-5)


def test_rope_matches_numpy_rotation():
    rng = np.random.default_rng(0)
    B, T, H, D, theta = 2, 5, 3, 8, 500.0
    x = rng.normal(size=(B, T, H, D))
    pos = rng.integers(0, 100, size=(B, T))
    expected = np.empty_like(x)
    half = D // 2
    for b in range(B):
        for t in range(T):
            for i in range(half):
                angle = pos[b, t] * theta ** (-i / half)
                c, s = np.cos(angle), np.sin(angle)
                x1, x2 = x[b, t, :, i], x[b, t, :, i + half]
                expected[b, t, :, i] = x1 * c - x2 * s
                expected[b, t, :, i + half] = x2 * c + x1 * s
    got = apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(pos), theta)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_rope_makes_scores_depend_on_relative_position():
    rng = np.random.default_rng(1)
    q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32) for _ in range(2))

    def score(i, j):
        qi = apply_rope(q, jnp.array([[i]]), 1e4)
        kj = apply_rope(k, jnp.array([[j]]), 1e4)
        return float((qi * kj).sum())

    assert np.isclose(score(7, 3), score(14, 10), rtol=1e-5)
    assert not np.isclose(score(7, 3), score(7, 5), rtol=1e-3)


def test_parameter_count_formula():
    cfg = load_config(
        None,
        [
            "model.dim=48",
            "model.num_layers=3",
            "model.num_heads=4",
            "model.num_kv_heads=2",
            "model.mlp_hidden=80",
            "model.vocab_size=100",
            "model.tie_embeddings=false",
        ],
    ).model
    model = nnx.eval_shape(lambda: Transformer(resolve_model(cfg), nnx.Rngs(0)))
    d, hd, kv = 48, 12, 2
    attn = d * d * 2 + 2 * d * kv * hd
    per_layer = attn + 3 * d * 80 + 2 * d
    assert count_params(nnx.state(model)) == 3 * per_layer + d + 2 * 100 * d


VARIANTS = {
    "baseline_mqa": ["model.num_kv_heads=1"],
    "mta_full": [
        "model.num_heads=4",
        "model.num_kv_heads=2",
        "model.attention.kq_pre.enabled=true",
        "model.attention.kq_pre.c_q=3",
        "model.attention.kq_pre.c_k=5",
        "model.attention.kq_post.enabled=true",
        "model.attention.kq_post.c_q=2",
        "model.attention.kq_post.c_k=3",
        "model.attention.kq_layers=[1]",
        "model.attention.head_pre=linear",
        "model.attention.head_post=grouped",
        "model.attention.head_group_size=2",
        "model.attention.group_norm=gating",
        "model.attention.kernel_init=uniform",
    ],
    "mta_conv3d_depth": [
        "model.attention.kq_pre.enabled=true",
        "model.attention.kq_pre.c_k=3",
        "model.attention.head_pre=conv3d",
        "model.attention.group_norm=depth_scaling",
        "model.attention.kernel_init=uniform",
    ],
    "talking_heads": ["model.attention.head_pre=grouped", "model.attention.head_post=grouped"],
    "diff": ["model.attention.kind=diff"],
    "fox_pro": [
        "model.attention.kind=fox",
        "model.attention.qk_norm=true",
        "model.attention.output_gate=elementwise",
    ],
    "stick_breaking_gqa": [
        "model.attention.kind=stick_breaking",
        "model.num_heads=4",
        "model.num_kv_heads=2",
    ],
    "gated_headwise_canon": ["model.attention.output_gate=headwise", "model.canon=AC"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_model_is_causal_through_gradients(tiny_config, variant):
    cfg = tiny_config(*VARIANTS[variant]).model
    model = Transformer(resolve_model(cfg), nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, cfg.dim))
    # d (sum of logits at i) / d (embedding at j): [B, T_out, B, T_in, E]
    jac = np.asarray(jax.jacrev(lambda x: model.from_embeddings(x).sum(-1))(x))
    influence_TT = np.abs(jac[0, :, 0]).sum(-1) + np.abs(jac[1, :, 1]).sum(-1)
    assert np.all(np.triu(influence_TT, k=1) == 0.0), "a position sees the future"
    assert np.all(np.diag(influence_TT) > 0) and np.all(np.tril(influence_TT)[1:, 0] > 0)


def test_bfloat16_compute_runs_and_stays_close(tiny_config):
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 259)
    out32 = Transformer(resolve_model(tiny_config().model), nnx.Rngs(0))(tokens)
    out16 = Transformer(
        resolve_model(tiny_config("model.compute_dtype=bfloat16").model), nnx.Rngs(0)
    )(tokens)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, out32, atol=0.05)


def test_identity_initialised_mta_model_equals_baseline(tiny_config):
    mta = [
        "model.num_heads=4",
        "model.attention.kq_pre.enabled=true",
        "model.attention.kq_post.enabled=true",
        "model.attention.kq_pre.c_k=5",
        "model.attention.head_pre=linear",
        "model.attention.head_post=grouped",
        "model.attention.head_group_size=2",
    ]
    baseline = Transformer(resolve_model(tiny_config("model.num_heads=4").model), nnx.Rngs(0))
    model = Transformer(resolve_model(tiny_config(*mta).model), nnx.Rngs(0))
    assert count_params(nnx.state(model)) > count_params(nnx.state(baseline))
    tokens = jax.random.randint(jax.random.key(0), (2, 11), 0, 259)
    np.testing.assert_allclose(model(tokens), baseline(tokens), rtol=1e-5, atol=1e-5)


def test_attention_maps_are_the_maps_the_model_attends_with(tiny_config):
    from mta.attention.core import weight_values

    model = Transformer(resolve_model(tiny_config(*VARIANTS["mta_full"]).model), nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 259)
    maps = model.attention_maps(tokens)
    assert len(maps) == len(model.blocks) and maps[0].shape == (2, 4, 9, 9)
    x_BTE = model.embed[...][tokens]
    positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
    for block, map_BHTS in zip(model.blocks, maps, strict=True):
        assert np.all(np.triu(np.asarray(map_BHTS), k=1) == 0.0)
        normed = block.attn_norm(x_BTE)
        _, _, v = block.attn._qkv(normed, positions)
        via_map = block.attn._output(weight_values(map_BHTS, v))
        np.testing.assert_allclose(via_map, block.attn(normed, positions), rtol=1e-5, atol=1e-6)
        x_BTE = block(x_BTE, positions)


@pytest.mark.parametrize("impl", ["reference", "dense"])
def test_forward_mode_through_the_model_without_tuned_derivatives(tiny_config, impl):
    """With model.tuned_vjp=disabled the model is plain autodiff: jax.jvp works, and the directional
    derivative it gives equals the one from reverse mode, <c, J u> == <J^T c, u>. With the tuned
    derivatives on (the CPU default) forward mode is not defined."""
    overrides = [*VARIANTS["mta_full"], f"model.attention.impl={impl}"]
    cfg = tiny_config(*overrides, "model.tuned_vjp=disabled").model
    model = Transformer(resolve_model(cfg), nnx.Rngs(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, cfg.dim)), jnp.float32)
    u = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    c = jnp.asarray(rng.normal(size=(2, 7, cfg.vocab_size)), jnp.float32)
    logits, jvp_out = jax.jit(lambda x, u: jax.jvp(model.from_embeddings, (x,), (u,)))(x, u)
    _, vjp = jax.vjp(model.from_embeddings, x)
    np.testing.assert_allclose(jnp.vdot(c, jvp_out), jnp.vdot(vjp(c)[0], u), rtol=1e-4)
    assert np.isfinite(logits).all()
    tuned = Transformer(
        resolve_model(tiny_config(*overrides, "model.tuned_vjp=enabled").model), nnx.Rngs(0)
    )
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(tuned.from_embeddings, (x,), (u,))

"""The other baselines (forgetting, stick-breaking and gated attention, Canon layers) against
the float64 loops of reference_variants.py: forward, gradients (finite differences of the loop),
causality and documents through gradients, packed rows, the chunked path, cached decoding."""

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mta.attention import (
    canon_conv,
    canon_step,
    canon_window,
    forgetting_attention,
    log_forget_gate,
    sigmoid_gate,
    stick_breaking_attention,
)
from mta.attention import decode as cached
from mta.attention.fox import fox_attend_step, fox_prefill
from mta.attention.stick_breaking import sb_attend_step, sb_prefill

from . import reference_variants as ref

SEGMENTS = np.array([[0, 0, 0, 1, 1, 1, 1], [3, 3, 4, 4, 4, 4, 5]], np.int32)


@dataclass(frozen=True)
class Variant:
    run: Callable  # (args, segment_ids, impl) -> out [B, T, ...]
    ref: Callable  # (args, segment_ids) -> float64 out
    shapes: dict  # name -> shape with T at axis 1 (per-position inputs) or not
    per_position: tuple  # the inputs with a T axis (cut for documents, for causality)


def _fox(a, seg, impl):
    return forgetting_attention(a["q"], a["k"], a["v"], log_forget_gate(a["g"]), seg, impl, 3)


def _sb(attend_current):
    def run(a, seg, impl):
        return stick_breaking_attention(a["q"], a["k"], a["v"], seg, attend_current, impl, 3)

    return run


QKV = {"q": (2, 7, 4, 3), "k": (2, 7, 2, 3), "v": (2, 7, 2, 3)}  # GQA: 4 query heads, 2 kv
VARIANTS = {
    "fox": Variant(
        _fox,
        lambda a, seg: ref.forgetting_attention(a["q"], a["k"], a["v"], a["g"], seg),
        {**QKV, "g": (2, 7, 4)},
        ("q", "k", "v", "g"),
    ),
    "stick_breaking": Variant(
        _sb(False),
        lambda a, seg: ref.stick_breaking_attention(a["q"], a["k"], a["v"], seg),
        QKV,
        ("q", "k", "v"),
    ),
    "stick_breaking_current": Variant(
        _sb(True),
        lambda a, seg: ref.stick_breaking_attention(a["q"], a["k"], a["v"], seg, True),
        QKV,
        ("q", "k", "v"),
    ),
    "canon": Variant(
        lambda a, seg, impl: canon_conv(a["x"], a["w"], seg),
        lambda a, seg: ref.canon(a["x"], a["w"], seg),
        {"x": (2, 7, 5), "w": (4, 5)},
        ("x",),
    ),
    "gate_elementwise": Variant(
        lambda a, seg, impl: sigmoid_gate(a["out"], jnp.einsum("bte,ehd->bthd", a["x"], a["w"])),
        lambda a, seg: ref.output_gate(a["out"], a["x"], a["w"]),
        {"out": (2, 7, 2, 3), "x": (2, 7, 5), "w": (5, 2, 3)},
        ("out", "x"),
    ),
    "gate_headwise": Variant(
        lambda a, seg, impl: sigmoid_gate(a["out"], jnp.einsum("bte,eh->bth", a["x"], a["w"])),
        lambda a, seg: ref.output_gate(a["out"], a["x"], a["w"]),
        {"out": (2, 7, 2, 3), "x": (2, 7, 5), "w": (5, 2)},
        ("out", "x"),
    ),
}
ATTENTION = ("fox", "stick_breaking", "stick_breaking_current")


def _impls(name):
    """blockwise is the chunked path of fox and stick-breaking; the others have one form."""
    return ("dense", "blockwise") if name in ATTENTION else ("dense",)


def _args(variant, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=s).astype(np.float32) for n, s in variant.shapes.items()}


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("segments", [False, True])
def test_matches_numpy_loop(name, segments):
    variant, seg = VARIANTS[name], SEGMENTS if segments else None
    args = _args(variant)
    want = variant.ref(args, seg)
    for impl in _impls(name):
        got = jax.jit(lambda a, impl=impl: variant.run(a, seg, impl))(args)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=impl)


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_match_numpy_finite_differences(name):
    """Directional derivatives of <C, out> for every input, dense and chunked, with documents."""
    variant = VARIANTS[name]
    args = _args(variant, seed=1)
    rng, eps = np.random.default_rng(2), 1e-4
    cotangent = rng.normal(size=variant.ref(args, SEGMENTS).shape)
    for impl in _impls(name):
        grads = jax.grad(lambda a, impl=impl: jnp.sum(variant.run(a, SEGMENTS, impl) * cotangent))(
            args
        )
        for name_, value in args.items():
            direction = rng.normal(size=value.shape)

            def loss(sign, name_=name_, value=value, direction=direction):
                moved = {**args, name_: value.astype(np.float64) + sign * eps * direction}
                return float(np.sum(variant.ref(moved, SEGMENTS) * cotangent))

            finite_diff = (loss(1) - loss(-1)) / (2 * eps)
            analytic = float(np.sum(np.asarray(grads[name_], np.float64) * direction))
            np.testing.assert_allclose(analytic, finite_diff, rtol=1e-4, atol=1e-5, err_msg=name_)


@pytest.mark.parametrize(("name", "impl"), [(n, i) for n in VARIANTS for i in _impls(n)])
def test_causal_and_document_local_through_gradients(name, impl):
    """d out[i] / d input[j] is exactly 0 for j > i and for j in another document."""
    variant = VARIANTS[name]
    args = {n: jnp.asarray(a) for n, a in _args(variant, seed=3).items()}
    names = variant.per_position

    def run(*xs):
        return variant.run({**args, **dict(zip(names, xs, strict=True))}, SEGMENTS, impl)

    jac = jax.jacrev(run, argnums=tuple(range(len(names))))(*(args[n] for n in names))
    for b in range(2):
        allowed = np.tril(SEGMENTS[b][:, None] == SEGMENTS[b][None, :])
        total = np.zeros((7, 7))
        for name_, grad in zip(names, jac, strict=True):
            grad = np.asarray(grad)  # [B, T, ..., B, T, ...]
            out_rank = grad.ndim - args[name_].ndim
            influence = np.abs(grad[b].take(b, axis=out_rank - 1))
            influence = influence.sum(axis=tuple(range(1, out_rank - 1)))  # [T_out, T_in, ...]
            influence = influence.reshape(7, 7, -1).sum(-1)
            assert np.all(influence[~allowed] == 0.0), name_
            total += influence
        assert np.all(total[np.eye(7, dtype=bool)] > 0)  # the test can fail


@pytest.mark.parametrize("name", ATTENTION + ("canon",))
def test_cached_decoding_equals_the_full_forward_at_every_position(name):
    """Prefill right-padded prompts of different lengths, then one token per step: every
    position's output equals the full forward's."""
    variant = VARIANTS[name]
    args = _args(variant, seed=4)
    full = np.asarray(variant.run(args, None, "dense"))
    lengths, prompt_len, max_len = np.array([2, 4]), 4, 7
    prompt = {n: a[:, :prompt_len] if n in variant.per_position else a for n, a in args.items()}
    if name == "canon":
        out = canon_conv(prompt["x"], args["w"])
        state = canon_window(prompt["x"], lengths, 3)
    else:
        out, state = _attention_prefill(name, prompt, lengths, max_len)
    for b, length in enumerate(lengths):
        np.testing.assert_allclose(out[b, :length], full[b, :length], rtol=1e-5, atol=1e-6)
    rows = np.arange(2)
    for step in range(max_len - lengths.max()):
        pos = lengths + step
        token = {n: a[rows, pos][:, None] for n, a in args.items() if n in variant.per_position}
        if name == "canon":
            out, state = canon_step(token["x"], state, args["w"])
        else:
            out, update = _attention_step(name, token, state)
            state = jax.jit(cached.commit)(state, update)
        np.testing.assert_allclose(out[:, 0], full[rows, pos], rtol=1e-5, atol=1e-6)


def _attention_prefill(name, a, lengths, max_len):
    if name == "fox":
        return fox_prefill(a["q"], a["k"], a["v"], log_forget_gate(a["g"]), lengths, max_len)
    current = name == "stick_breaking_current"
    return sb_prefill(a["q"], a["k"], a["v"], lengths, max_len, current)


def _attention_step(name, a, cache):
    if name == "fox":
        return fox_attend_step(a["q"], a["k"], a["v"], log_forget_gate(a["g"]), cache)
    return sb_attend_step(a["q"], a["k"], a["v"], cache, name == "stick_breaking_current")


@pytest.mark.parametrize("name", ATTENTION)
def test_chunked_path_with_several_chunks_and_queries_after_keys(name):
    """Chunks of 2 over 7 queries (padding), and T < S (queries are the last T positions)."""
    variant = VARIANTS[name]
    args = _args(variant, seed=5)
    want = np.asarray(variant.run(args, None, "dense"))[:, 3:]
    late = {**args, "q": args["q"][:, 3:]}
    for impl in ("dense", "blockwise"):
        np.testing.assert_allclose(variant.run(late, None, impl), want, rtol=1e-5, atol=1e-6)

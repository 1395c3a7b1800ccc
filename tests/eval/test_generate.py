"""Cached decoding through the model, and generation on top of it.

Model level: prefill of right-padded prompts (noise after each row's length) + one decode step per
further token gives the full forward's logits at every position, for MTA (random kernels, head
mixing, group norm), GQA/MQA and DIFF. Generation: stop strings, eos, max_new_tokens, batching,
determinism and seeded sampling.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mta.attention import decode as cached
from mta.config import load_config
from mta.eval.generate import Generator, sample_tokens
from mta.model import Transformer
from mta.resolve import resolve_model

MAX_REL_ERR = 1e-5
LENGTHS = np.array([3, 6, 1])  # prompt length per row
NUM_STEPS = 5
MAX_LEN = 16
TINY = ["model.dim=32", "model.num_layers=2", "model.mlp_hidden=64", "model.num_heads=2"]

MTA = [
    "model.num_heads=4",
    "model.attention.kq_pre.enabled=true",
    "model.attention.kq_post.enabled=true",
    "model.attention.head_post=grouped",
    "model.attention.head_group_size=2",
]
VARIANTS = {
    # layer 0 mixes heads without key-query conv, layer 1 has both convs
    "mta_linear_gating_gqa": MTA
    + [
        "model.num_kv_heads=2",
        "model.attention.kq_layers=[1]",
        "model.attention.kq_pre.c_q=3",
        "model.attention.kq_pre.c_k=5",
        "model.attention.kq_post.c_q=2",
        "model.attention.kq_post.c_k=3",
        "model.attention.head_pre=linear",
        "model.attention.group_norm=gating",
    ],
    "mta_grouped_depth_mqa": MTA
    + [
        "model.num_kv_heads=1",
        "model.attention.kq_pre.c_q=2",
        "model.attention.kq_pre.c_k=1",
        "model.attention.kq_post.c_q=3",
        "model.attention.kq_post.c_k=5",
        "model.attention.head_pre=grouped",
        "model.attention.group_norm=depth_scaling",
    ],
    "diff_gqa": ["model.attention.kind=diff", "model.num_heads=2", "model.num_kv_heads=1"],
}


def _model(*overrides, seed=0):
    """A tiny model with every parameter random: MTA kernels, head mixing, gates and DIFF lambdas
    far from their identity init, norm weights near 1. Built abstractly and filled from numpy,
    which skips compiling the initialisers for every new shape."""
    cfg = load_config(None, TINY + list(overrides)).model
    model = nnx.eval_shape(lambda: Transformer(resolve_model(cfg), nnx.Rngs(0)))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = path[-2].key  # the parameter's name (the path ends with its .value)
        if name in ("weight", "out_norm", "head_norm"):
            return jnp.asarray(1.0 + 0.3 * rng.normal(size=x.shape), jnp.float32)
        scale = 0.2 if name in ("embed", "wq", "wk", "wv", "wo", "gate", "up", "down") else 0.3
        return jnp.asarray(scale * rng.normal(size=x.shape), jnp.float32)

    nnx.update(model, jax.tree_util.tree_map_with_path(draw, nnx.state(model)))
    return model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_prefill_and_decode_give_forward_logits(variant):
    model = _model(*VARIANTS[variant])
    graphdef, state = nnx.split(model)
    prefill = jax.jit(lambda s, t, n: nnx.merge(graphdef, s).prefill(t, n, MAX_LEN))
    decode = jax.jit(lambda s, t, caches: nnx.merge(graphdef, s).decode(t, caches))
    commit = jax.jit(lambda caches, updates: tuple(map(cached.commit, caches, updates)))
    rng = np.random.default_rng(1)
    batch, num_tokens = len(LENGTHS), int(LENGTHS.max()) + NUM_STEPS
    tokens_BN = rng.integers(0, 259, size=(batch, num_tokens)).astype(np.int32)
    want_BNV = np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, tokens_BN))

    prompt_BT = tokens_BN[:, : LENGTHS.max()].copy()
    for b, length in enumerate(LENGTHS):  # what follows a prompt must not matter
        prompt_BT[b, length:] = rng.integers(0, 259, size=LENGTHS.max() - length)
    logits_BTV, caches = prefill(state, prompt_BT, LENGTHS)
    got_BNV = np.full(want_BNV.shape, np.nan, np.float32)
    for b, length in enumerate(LENGTHS):
        got_BNV[b, :length] = logits_BTV[b, :length]
    rows = np.arange(batch)
    for step in range(NUM_STEPS):
        pos_B = LENGTHS + step
        logits_B1V, updates = decode(state, tokens_BN[rows, pos_B][:, None], caches)
        caches = commit(caches, updates)
        got_BNV[rows, pos_B] = logits_B1V[:, 0]
    assert len(caches) == model.settings.num_layers
    for b, length in enumerate(LENGTHS):
        end = length + NUM_STEPS
        err = np.abs(got_BNV[b, :end] - want_BNV[b, :end]).max() / np.abs(want_BNV[b, :end]).max()
        assert err < MAX_REL_ERR, f"row {b}: relative error {err:.2e}"


# One layer with every MTA part and untied embeddings (varied greedy outputs).
GEN = [
    "model.num_layers=1",
    "model.tie_embeddings=false",
    "model.num_kv_heads=2",
    "model.attention.kq_pre.c_q=2",
    "model.attention.kq_pre.c_k=3",
    "model.attention.kq_post.c_q=2",
    "model.attention.kq_post.c_k=3",
    "model.attention.head_pre=linear",
    "model.attention.group_norm=gating",
]
PROMPTS = ["hello", "a", "the quick"]


@pytest.fixture(scope="module")
def generator():
    return Generator(_model(*MTA, *GEN))


def _free_run(generator, prompts=PROMPTS, **kwargs):
    """Greedy, no eos, max_new_tokens 10, a shared cache size so shapes (and compiles) repeat."""
    return generator(prompts, 10, eos_id=None, max_len=MAX_LEN + 4, **kwargs)


def test_stops_at_max_new_tokens(generator):
    for completion in _free_run(generator):
        assert completion.finish_reason == "length" and len(completion.tokens) == 10


def test_batched_prompts_equal_one_by_one_and_full_recompute(generator):
    batched = _free_run(generator)
    recomputed = _free_run(generator, use_cache=False)
    for i, prompt in enumerate(PROMPTS):
        (alone,) = _free_run(generator, [prompt])
        np.testing.assert_array_equal(batched[i].tokens, alone.tokens)
        np.testing.assert_array_equal(batched[i].tokens, recomputed[i].tokens)
    assert len({tuple(c.tokens) for c in batched}) == len(PROMPTS)  # the rows do differ


def test_greedy_is_deterministic(generator):
    first, second = _free_run(generator), _free_run(generator)
    assert [c.tokens.tolist() for c in first] == [c.tokens.tolist() for c in second]


def _bytes(tokens):
    return bytes(t for t in tokens if t < 256)


def test_stops_at_stop_string(generator):
    free = _free_run(generator)
    tokens = free[0].tokens.tolist()
    data = _bytes(tokens)
    assert len(data) >= 7, "need a byte-rich free run to cut a stop string from"
    stop = data[5:7]
    # the row stops at the first token after which the stop string appears in its bytes
    n = next(i for i in range(1, len(tokens) + 1) if stop in _bytes(tokens[:i]))
    got = _free_run(generator, stop=[b"\x00never\x00", stop])
    assert got[0].finish_reason == "stop"
    assert got[0].tokens.tolist() == tokens[:n]
    assert got[0].text == data[: data.find(stop)].decode("utf-8", errors="replace")
    # the other rows are unaffected unless they meet the stop string themselves
    for other, free_other in zip(got[1:], free[1:], strict=True):
        if stop not in _bytes(free_other.tokens.tolist()):
            assert other.finish_reason == "length"
            np.testing.assert_array_equal(other.tokens, free_other.tokens)


def test_stops_at_eos(generator):
    tokens = _free_run(generator)[1].tokens.tolist()
    eos = tokens[4]
    got = generator(PROMPTS, 10, eos_id=eos, max_len=MAX_LEN + 4)[1]
    assert got.finish_reason == "eos" and got.tokens.tolist() == tokens[: tokens.index(eos) + 1]


def test_sampling_is_reproducible_with_a_seed(generator):
    def sample(seed, **kwargs):
        out = _free_run(generator, temperature=1.0, seed=seed, **kwargs)
        return [c.tokens.tolist() for c in out]

    greedy = [c.tokens.tolist() for c in _free_run(generator)]
    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
    assert sample(3) != greedy
    assert sample(5, top_k=1) == greedy


def test_top_k_sampling_draws_only_the_top_k():
    logits_BV = np.log(np.array([[0.1, 0.3, 0.05, 0.25, 0.3]] * 400, np.float32))
    draws = np.asarray(sample_tokens(logits_BV, jax.random.key(0), temperature=1.0, top_k=3))
    assert set(draws.tolist()) == {1, 3, 4}
    greedy = np.asarray(sample_tokens(logits_BV, jax.random.key(0)))
    assert set(greedy.tolist()) == {1}


def test_user_errors(generator):
    with pytest.raises(ValueError, match="non-empty"):
        generator([""], 4, bos=False)
    with pytest.raises(ValueError, match="max_len"):
        generator(PROMPTS, 10, max_len=8)
    with pytest.raises(ValueError, match="stop"):
        generator(PROMPTS, 4, stop=[""])

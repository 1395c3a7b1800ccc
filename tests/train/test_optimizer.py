"""Schedules, and weight decay from each parameter's `weight_decay` metadata (the choice for MTA
parameters is model.attention.decay_mta_params)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mta.config import load_config
from mta.model import Transformer
from mta.resolve import resolve_model
from mta.train.optimizer import decay_mask, make_optimizer, make_schedule

# The names the mask was built from before parameters carried `weight_decay` metadata: these
# were decayed only with decay_mta_params, all else (DIFF lambdas and head norm too) always.
OLD_MTA_NAMES = {"kq_pre", "kq_post", "head_pre", "head_post", "out_norm", "gate_w", "gate_b"}

MTA = [
    "model.attention.kq_pre.enabled=true",
    "model.attention.kq_pre.c_k=3",
    "model.attention.head_pre=linear",
    "model.attention.head_post=grouped",
    "model.attention.group_norm=gating",
]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedules(schedule):
    cfg = load_config(
        None,
        [
            f"train.schedule={schedule}",
            "train.steps=110",
            "train.warmup_steps=10",
            "train.lr=1.0",
            "train.min_lr_ratio=0.2",
        ],
    ).train
    lr = make_schedule(cfg)
    np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 0.5, 1.0], atol=1e-6)
    end = {"constant": 1.0, "linear": 0.2, "cosine": 0.2}[schedule]
    np.testing.assert_allclose(lr(110), end, atol=1e-6)
    middle = {"constant": 1.0, "linear": 0.6, "cosine": 0.6}[schedule]
    np.testing.assert_allclose(lr(60), middle, atol=1e-6)


@pytest.mark.parametrize("decay_mta", [True, False])
def test_weight_decay_of_mta_parameters_is_a_choice(decay_mta):
    cfg = load_config(
        None,
        MTA
        + [
            f"model.attention.decay_mta_params={decay_mta}",
            "train.weight_decay=0.5",
            "train.lr=0.1",
            "train.warmup_steps=0",
            "train.clip_norm=0",
        ],
    )
    state = nnx.state(Transformer(resolve_model(cfg.model), nnx.Rngs(0)))
    params = state.to_pure_dict()
    optimizer = make_optimizer(cfg.train, decay_mask(state))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)

    def check(path, old, updated):
        if not np.any(old):
            return  # decay of a zero is invisible
        is_mta = bool({getattr(k, "key", None) for k in path} & OLD_MTA_NAMES)
        decayed = not np.allclose(old, updated)
        assert decayed == (decay_mta or not is_mta), jax.tree_util.keystr(path)

    jax.tree_util.tree_map_with_path(check, params, new)


def old_name_based_mask(params: dict, decay_mta_params: bool) -> dict:
    def decays(path, _):
        names = {getattr(k, "key", None) for k in path}
        return decay_mta_params or not names & OLD_MTA_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


@pytest.mark.parametrize("decay_mta", [True, False])
@pytest.mark.parametrize(
    "variant",
    [
        [*MTA, "model.attention.kq_post.enabled=true", "model.attention.head_group_size=1"],
        [*MTA[:3], "model.attention.head_pre=conv3d", "model.attention.kq_layers=[1]"],
        ["model.attention.kind=diff"],
    ],
    ids=["mta", "conv3d", "diff"],
)
def test_mask_from_metadata_equals_the_old_name_based_mask(variant, decay_mta):
    cfg = load_config(None, [*variant, f"model.attention.decay_mta_params={decay_mta}"])
    state = nnx.eval_shape(lambda: Transformer(resolve_model(cfg.model), nnx.Rngs(0)))
    state = nnx.state(state)
    mask = decay_mask(state)
    assert mask == old_name_based_mask(state.to_pure_dict(), decay_mta)
    # all decayed unless MTA parameters are exempt (DIFF's lambdas and head norm always decay)
    assert all(jax.tree.leaves(mask)) == (decay_mta or cfg.model.attention.kind == "diff")


def test_a_parameter_with_weight_decay_false_is_not_decayed():
    class Tiny(nnx.Module):
        def __init__(self):
            self.kept = nnx.Param(jnp.ones((3,)), weight_decay=False)
            self.decayed = nnx.Param(jnp.ones((3,)), weight_decay=True)
            self.default = nnx.Param(jnp.ones((3,)))

    cfg = load_config(
        None,
        ["train.weight_decay=0.5", "train.lr=0.1", "train.warmup_steps=0", "train.clip_norm=0"],
    )
    state = nnx.state(Tiny())
    assert decay_mask(state) == {"kept": False, "decayed": True, "default": True}
    params = state.to_pure_dict()
    optimizer = make_optimizer(cfg.train, decay_mask(state))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["kept"], params["kept"])
    np.testing.assert_allclose(new["decayed"], 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(new["default"], 1 - 0.1 * 0.5, rtol=1e-6)

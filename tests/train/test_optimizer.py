"""Schedules and the weight-decay choice for MTA parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mta.config import load_config
from mta.model import MTA_PARAM_NAMES, Transformer
from mta.train.optimizer import make_optimizer, make_schedule

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
    params = nnx.state(Transformer(cfg.model, nnx.Rngs(0))).to_pure_dict()
    optimizer = make_optimizer(cfg.train, params, decay_mta)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)

    def check(path, old, updated):
        if not np.any(old):
            return  # decay of a zero is invisible
        is_mta = bool({getattr(k, "key", None) for k in path} & set(MTA_PARAM_NAMES))
        decayed = not np.allclose(old, updated)
        assert decayed == (decay_mta or not is_mta), jax.tree_util.keystr(path)

    jax.tree_util.tree_map_with_path(check, params, new)

"""AdamW with warmup then a constant, linear or cosine schedule, and global-norm clipping."""

import jax
import optax
from flax import nnx

from mta.config import TrainConfig


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup 0 -> `lr` over `warmup_steps`, then the chosen decay to lr * min_lr_ratio."""
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    end = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    if cfg.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def decay_mask(state: nnx.State) -> dict:
    """True where weight decay applies, from each parameter's `weight_decay` metadata (set where
    the model creates it; absent means True), as a pure dict shaped like the params."""
    flags = jax.tree.map(
        lambda variable: bool(getattr(variable, "weight_decay", True)),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return nnx.State(flags).to_pure_dict()


def make_optimizer(cfg: TrainConfig, decay: dict):
    """The optax transformation for params shaped like `decay` (decay_mask of the model state:
    True where weight decay applies)."""
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    parts.append(
        optax.adamw(
            make_schedule(cfg),
            b1=cfg.beta1,
            b2=cfg.beta2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay,
        )
    )
    return optax.chain(*parts)

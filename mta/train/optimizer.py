"""AdamW with warmup then a constant, linear or cosine schedule, and global-norm clipping."""

import jax
import optax

from mta.config import TrainConfig
from mta.model import MTA_PARAM_NAMES


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


def decay_mask(params: dict, decay_mta_params: bool) -> dict:
    """True where weight decay applies: everywhere (as in the MTA release), or everywhere but
    the MTA kernels, head-mixing matrices and group-norm weights."""

    def decays(path, _):
        names = {getattr(k, "key", None) for k in path}
        return decay_mta_params or not names & set(MTA_PARAM_NAMES)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: TrainConfig, params: dict, decay_mta_params: bool = True):
    """The optax transformation for `params` (a pure dict of arrays)."""
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    parts.append(
        optax.adamw(
            make_schedule(cfg),
            b1=cfg.beta1,
            b2=cfg.beta2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask(params, decay_mta_params),
        )
    )
    return optax.chain(*parts)

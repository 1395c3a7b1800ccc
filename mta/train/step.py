"""Pure train and eval steps: (graphdef, state, batch) in, new state and metrics out.

A batch is a dict of [B, T] arrays: `inputs` and `targets` (int32 tokens) and `weights`
(float32, 1 where the loss counts: the answer tokens of a task, every real token of text).
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mta.config import TrainConfig
from mta.train.mesh import batch_sharding, replicated, vote_sharding


def forward(graphdef: nnx.GraphDef, params: dict, batch: dict) -> jax.Array:
    """Logits [B, T, V] float32 of the model `graphdef` with `params` on `batch['inputs']`."""
    model = nnx.merge(graphdef, params)
    return model(batch["inputs"], batch.get("positions"), batch.get("segment_ids"))


def loss_and_metrics(graphdef, params, batch, total_weight=None):
    """Weighted cross-entropy over the target tokens divided by `total_weight` (default: this
    batch's weight, i.e. the mean), and token accuracy on the same scale."""
    logits_BTV = forward(graphdef, params, batch)
    weights = batch["weights"].astype(jnp.float32)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch["targets"])
    if total_weight is None:
        total_weight = jnp.maximum(weights.sum(), 1.0)
    loss = (token_loss * weights).sum() / total_weight
    correct = (logits_BTV.argmax(-1) == batch["targets"]) * weights
    return loss, {"loss": loss, "token_accuracy": correct.sum() / total_weight}


def gradients(graphdef, params, batch, micro_batches: int):
    """(metrics, grads) of the batch's mean loss, summed over `micro_batches` sequential slices
    of the batch (gradient accumulation: the same result with 1/micro_batches the activations)."""
    grad_fn = jax.value_and_grad(loss_and_metrics, argnums=1, has_aux=True)
    total = jnp.maximum(batch["weights"].astype(jnp.float32).sum(), 1.0)
    if micro_batches == 1:
        (_, metrics), grads = grad_fn(graphdef, params, batch, total)
        return metrics, grads
    # [B, ...] -> [micro_batches, B / micro_batches, ...]
    split = jax.tree.map(lambda x: x.reshape(micro_batches, -1, *x.shape[1:]), batch)

    def accumulate(carry, micro):
        (_, metrics), grads = grad_fn(graphdef, params, micro, total)
        return jax.tree.map(jnp.add, carry, (metrics, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, ({"loss": total, "token_accuracy": total}, params))
    (metrics, grads), _ = jax.lax.scan(accumulate, zeros, split)
    return metrics, grads


def train_step(graphdef, optimizer, schedule, cfg: TrainConfig, state: dict, batch: dict):
    """One optimizer update. state = {params, opt_state, step, skipped} -> (new state, metrics).

    metrics["finite"] says whether loss and gradients were finite and metrics["finite_by_param"]
    ([num_params] bools, in tree-leaf order) which parameters' gradients were. With
    cfg.skip_nonfinite a non-finite update is not applied and counted in state["skipped"].
    """
    metrics, grads = gradients(graphdef, state["params"], batch, cfg.grad_accum)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["lr"] = schedule(state["step"])
    metrics["finite_by_param"] = jnp.stack([jnp.isfinite(g).all() for g in jax.tree.leaves(grads)])
    finite = jnp.isfinite(metrics["loss"]) & metrics["finite_by_param"].all()
    metrics["finite"] = finite
    skipped = state["skipped"]
    if cfg.skip_nonfinite:
        keep_old = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
        params = keep_old(params, state["params"])
        opt_state = keep_old(opt_state, state["opt_state"])
        skipped = skipped + (~finite).astype(skipped.dtype)
    metrics["skipped_nonfinite"] = skipped
    new_state = {
        "params": params,
        "opt_state": opt_state,
        "step": state["step"] + 1,
        "skipped": skipped,
    }
    return new_state, metrics


def make_train_step(setup, donate: bool = True, votes: bool = False):
    """The jitted train step of a TrainSetup, state and batch on their shardings (the state
    donated): step_fn(state, batch) -> (new state, metrics), metrics replicated. The one place
    the loop, the benchmarks and the dry run's memory analysis get it from.

    With `votes` (a multi-process run): step_fn(state, batch, votes) with votes a [num_devices]
    int32 array on mesh.vote_sharding, and metrics["stop"] (replicated) says whether any vote
    was set: every process learns from the step itself whether any process was signalled."""
    cfg = setup.cfg
    step = functools.partial(train_step, setup.graphdef, setup.optimizer, setup.schedule, cfg.train)
    in_shardings = (setup.shardings, batch_sharding(setup.mesh))
    if votes:
        step = functools.partial(_voting_step, step)
        in_shardings = (*in_shardings, vote_sharding(setup.mesh))
    return jax.jit(
        step,
        in_shardings=in_shardings,
        out_shardings=(setup.shardings, replicated(setup.mesh)),
        donate_argnums=0 if donate else (),
    )


def _voting_step(step, state: dict, batch: dict, votes: jax.Array):
    new_state, metrics = step(state, batch)
    metrics["stop"] = (votes > 0).any()
    return new_state, metrics


def make_eval_step(setup):
    """The jitted eval step of a TrainSetup: (params, batch split over the batch axes) -> sums,
    replicated. Compiled once per batch shape."""
    return jax.jit(
        functools.partial(eval_step, setup.graphdef),
        in_shardings=(setup.shardings["params"], batch_sharding(setup.mesh)),
        out_shardings=replicated(setup.mesh),
    )


def eval_step(graphdef, params: dict, batch: dict) -> dict:
    """Sums over a batch: loss, weight, and examples whose every weighted token is predicted
    right by argmax (teacher-forced, which equals greedy decoding's exact match)."""
    logits_BTV = forward(graphdef, params, batch)
    weights = batch["weights"].astype(jnp.float32)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch["targets"])
    wrong_BT = (logits_BTV.argmax(-1) != batch["targets"]) & (weights > 0)
    has_target_B = (weights > 0).any(-1)
    return {
        "loss_sum": (token_loss * weights).sum(),
        "weight_sum": weights.sum(),
        "exact": (has_target_B & ~wrong_BT.any(-1)).sum(),
        "examples": has_target_B.sum(),
    }

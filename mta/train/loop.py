"""The training loop: data -> jitted train step -> metrics, evaluation and checkpoints.

`train(cfg, workdir)` resumes from the newest checkpoint in the workdir if there is one, and then
continues exactly as an uninterrupted run would (same batches, same updates).
"""

import functools
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from mta.config import Config, to_yaml
from mta.data import pipeline
from mta.train import checkpoint
from mta.train.mesh import batch_sharding, make_mesh, replicated
from mta.train.metrics import MetricsWriter
from mta.train.state import TrainSetup
from mta.train.step import eval_step, train_step


def evaluate(setup: TrainSetup, params: dict, batches: list[dict]) -> dict:
    """Exact-match error (%) and mean loss over the answer tokens of `batches`."""
    step_fn = jax.jit(functools.partial(eval_step, setup.graphdef))
    totals = {}
    for batch in batches:
        batch = jax.device_put(batch, replicated(setup.mesh))
        for key, value in step_fn(params, batch).items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return {
        "eval/exact_match_error": 100.0 * (1.0 - totals["exact"] / max(totals["examples"], 1)),
        "eval/loss": totals["loss_sum"] / max(totals["weight_sum"], 1.0),
        "eval/examples": int(totals["examples"]),
    }


def _progress(cfg: Config, start: int):
    show = {"on": True, "off": False, "auto": sys.stderr.isatty()}[cfg.log.progress]
    return tqdm(
        total=cfg.train.steps,
        initial=start,
        disable=not show or jax.process_index() != 0,
        dynamic_ncols=True,
    )


def train(cfg: Config, workdir: str | Path, until_step: int | None = None) -> dict:
    """Trains to `cfg.train.steps` (or stops after `until_step`, saving a checkpoint there).

    Writes WORKDIR/config.yaml, metrics.jsonl, tensorboard/ and checkpoints/. Returns the last
    logged metrics (with the final evaluation).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        (workdir / "config.yaml").write_text(to_yaml(cfg))

    mesh = make_mesh(cfg.mesh)
    setup = TrainSetup(cfg, mesh)
    builder = pipeline.prepare(cfg.data)
    seq_len = pipeline.sequence_length(cfg.data)
    train_ds = pipeline.train_dataset(
        builder,
        seq_len,
        cfg.train.batch_size,
        cfg.train.seed,
        jax.process_index(),
        jax.process_count(),
    )
    data_iter = iter(train_ds.to_iter_dataset())
    eval_data = pipeline.eval_batches(
        builder, cfg.eval.split, seq_len, cfg.eval.num_examples, cfg.eval.batch_size
    )

    manager = checkpoint.make_manager(workdir, cfg.checkpoint)
    latest = manager.latest_step()
    if latest is None:
        state = setup.init_state()
    else:
        state = checkpoint.restore(manager, latest, setup.abstract_state(), data_iter)
    step = int(state["step"])
    last_step = min(cfg.train.steps, until_step or cfg.train.steps)

    data_sharding = batch_sharding(mesh)
    step_fn = jax.jit(
        functools.partial(train_step, setup.graphdef, setup.optimizer, setup.schedule),
        in_shardings=(setup.shardings, data_sharding),
        out_shardings=(setup.shardings, replicated(mesh)),
        donate_argnums=0,
    )
    writer = MetricsWriter(workdir, step, cfg.log.tensorboard, is_main)
    progress = _progress(cfg, step)
    record: dict = {}
    tokens_since, time_since = 0, time.perf_counter()
    try:
        while step < last_step:
            local = next(data_iter)
            batch = {
                k: jax.make_array_from_process_local_data(data_sharding, v)
                for k, v in local.items()
            }
            state, metrics = step_fn(state, batch)
            step += 1
            tokens_since += cfg.train.batch_size * seq_len
            progress.update(1)
            is_eval = step == cfg.train.steps or (cfg.eval.every and step % cfg.eval.every == 0)
            if step % cfg.log.every == 0 or is_eval or step == last_step:
                metrics = jax.device_get(metrics)
                elapsed = time.perf_counter() - time_since
                record = {k: float(v) for k, v in metrics.items()}
                record["tokens_per_s"] = tokens_since / elapsed
                if is_eval:
                    record.update(evaluate(setup, state["params"], eval_data))
                writer.write(step, record)
                progress.set_postfix(loss=f"{record['loss']:.4f}")
                if not np.isfinite(record["loss"]):
                    raise FloatingPointError(f"loss is {record['loss']} at step {step}")
                tokens_since, time_since = 0, time.perf_counter()
            if step % cfg.checkpoint.every == 0 or step == last_step:
                checkpoint.save(manager, step, state, data_iter)
        if "eval/exact_match_error" not in record:  # e.g. relaunched on a finished run
            record.update(evaluate(setup, state["params"], eval_data))
    finally:
        progress.close()
        writer.close()
        manager.wait_until_finished()
        manager.close()
    return {"step": step, **record}

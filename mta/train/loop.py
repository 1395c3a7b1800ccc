"""The training loop: data -> jitted train step -> metrics, evaluation and checkpoints.

`train(cfg, workdir)` resumes from the newest readable checkpoint in the workdir if there is one,
and then continues exactly as an uninterrupted run would (same batches, same updates).
SIGTERM/SIGINT end the run after the current step with a checkpoint at that step.
"""

import functools
import sys
import time
from pathlib import Path

import jax
import numpy as np
import yaml
from jax.experimental import multihost_utils
from tqdm import tqdm

from mta.config import Config, ConfigError, resume_diff, to_dict, to_yaml
from mta.data import pipeline
from mta.data.tokenizers import record as tokenizer_record
from mta.train import checkpoint
from mta.train.faults import NonFiniteError, StopRequest
from mta.train.health import LossSpikeDetector, peak_memory_mb
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


def check_resume_config(cfg: Config, workdir: Path, allow_change: bool) -> None:
    """Refuses (ConfigError) to resume a workdir whose saved config differs in anything but
    harmless keys, unless allow_change, which reports the difference instead."""
    saved_path = workdir / "config.yaml"
    if not saved_path.exists() or not (workdir / "checkpoints").exists():
        return
    changes = resume_diff(yaml.safe_load(saved_path.read_text()), to_dict(cfg))
    if changes and not allow_change:
        raise ConfigError(
            f"{workdir} was trained with another config ({'; '.join(changes)}); "
            "use a new workdir, or --allow-config-change to resume anyway"
        )
    for change in changes:
        print(f"warning: config changed on resume: {change}", file=sys.stderr)


def _progress(cfg: Config, start: int):
    show = {"on": True, "off": False, "auto": sys.stderr.isatty()}[cfg.log.progress]
    return tqdm(
        total=cfg.train.steps,
        initial=start,
        disable=not show or jax.process_index() != 0,
        dynamic_ncols=True,
    )


def _any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (so all stop at the same step)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _train_record(metrics, steps: int, tokens: int, elapsed: float, spikes, step: int) -> dict:
    """The metrics.jsonl record of a logged step: train metrics, speed, memory, warnings."""
    metrics = jax.device_get(metrics)
    record = {k: float(v) for k, v in metrics.items() if k != "finite_by_param"}
    record["step_time_s"] = elapsed / steps
    record["tokens_per_s"] = tokens / elapsed
    record.update(peak_memory_mb())
    warning = spikes.check(record["loss"])
    if warning:
        record["warning"] = warning
        print(f"warning: step {step}: {warning}", file=sys.stderr)
    return record


def _nonfinite_message(step: int, params: dict, finite_by_param) -> str:
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    bad = [path for path, ok in zip(paths, np.asarray(finite_by_param), strict=True) if not ok]
    where = f"; first non-finite gradient: params{bad[0]}" if bad else " (gradients finite)"
    return f"loss or gradients are NaN/Inf at step {step}{where}; not checkpointed"


def train(
    cfg: Config, workdir: str | Path, until_step: int | None = None, allow_config_change=False
) -> dict:
    """Trains to `cfg.train.steps` (or stops after `until_step`, saving a checkpoint there).

    Writes WORKDIR/config.yaml, tokenizer.json (which tokenizer: kind, path, fingerprint),
    metrics.jsonl, tensorboard/ and checkpoints/. Returns the last
    logged metrics (with the final evaluation), plus `stopped_by` if a signal ended the run early
    (the signal's name, or "another process" when it reached another host).
    Raises ConfigError, NonFiniteError or CheckpointWriteError.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    check_resume_config(cfg, workdir, allow_config_change)
    tok = pipeline.configured_tokenizer(cfg)
    tokenizer_record.check(workdir, tok)

    mesh = make_mesh(cfg.mesh)
    setup = TrainSetup(cfg, mesh)
    builder = pipeline.prepare(cfg.data)
    seq_len = pipeline.sequence_length(cfg.data)
    data_iter = pipeline.train_iterator(
        builder, cfg.data, seq_len, cfg.train.batch_size, cfg.train.seed
    )
    eval_data = pipeline.eval_batches(
        pipeline.split_source(builder, cfg.data, cfg.eval.split, seq_len),
        seq_len,
        cfg.eval.num_examples,
        cfg.eval.batch_size,
        cfg.data.too_long,
        tok.pad_id,
    )

    manager, state = checkpoint.open_and_restore(
        workdir, cfg.checkpoint, setup.abstract_state(), data_iter
    )
    if state is None:
        state = setup.init_state()
    if is_main:
        (workdir / "config.yaml").write_text(to_yaml(cfg))
        tokenizer_record.write(workdir, tok)
    step = int(state["step"])
    last_step = min(cfg.train.steps, until_step or cfg.train.steps)

    data_sharding = batch_sharding(mesh)
    step_fn = jax.jit(
        functools.partial(train_step, setup.graphdef, setup.optimizer, setup.schedule, cfg.train),
        in_shardings=(setup.shardings, data_sharding),
        out_shardings=(setup.shardings, replicated(mesh)),
        donate_argnums=0,
    )
    writer = MetricsWriter(workdir, step, cfg.log.tensorboard, is_main)
    progress = _progress(cfg, step)
    spikes = LossSpikeDetector()
    record: dict = {}
    steps_since, time_since = 0, time.perf_counter()
    try:
        with jax.set_mesh(mesh), StopRequest() as stop:
            while step < last_step:
                local = next(data_iter)
                batch = {
                    k: jax.make_array_from_process_local_data(data_sharding, v)
                    for k, v in local.items()
                }
                state, metrics = step_fn(state, batch)
                step += 1
                steps_since += 1
                progress.update(1)
                if not cfg.train.skip_nonfinite and not bool(metrics["finite"]):
                    raise NonFiniteError(
                        _nonfinite_message(step, state["params"], metrics["finite_by_param"])
                    )
                is_eval = step == cfg.train.steps or (cfg.eval.every and step % cfg.eval.every == 0)
                stopping = _any_process(stop.signum is not None)
                if step % cfg.log.every == 0 or is_eval or step == last_step or stopping:
                    elapsed = time.perf_counter() - time_since
                    tokens = steps_since * cfg.train.batch_size * seq_len
                    record = _train_record(metrics, steps_since, tokens, elapsed, spikes, step)
                    if is_eval:
                        record.update(evaluate(setup, state["params"], eval_data))
                    writer.write(step, record)
                    progress.set_postfix(loss=f"{record['loss']:.4f}")
                    steps_since, time_since = 0, time.perf_counter()
                if step % cfg.checkpoint.every == 0 or step == last_step or stopping:
                    checkpoint.save(manager, step, state, data_iter)
                if stopping:
                    checkpoint.wait(manager)
                    return {"step": step, **record, "stopped_by": stop.signal_name}
        if "eval/exact_match_error" not in record:
            record.update(evaluate(setup, state["params"], eval_data))
        checkpoint.wait(manager)
    finally:
        progress.close()
        writer.close()
        try:
            manager.close()
        except Exception:  # a failed save was already raised by checkpoint.save/wait
            pass
    return {"step": step, **record}

"""The training loop: data -> jitted train step -> metrics, evaluation and checkpoints.

`train(cfg, workdir)` resumes from the newest readable checkpoint in the workdir if there is one,
and then continues exactly as an uninterrupted run would (same batches, same updates).
SIGTERM/SIGINT end the run after the current step with a checkpoint at that step.

The host runs ahead of the devices: it dispatches step k+1 before it reads whether step k was
finite (train.run_ahead), fetches metrics only at logging steps, and a background thread reads
and transfers the next batches while a step runs (data.prefetch). A multi-process run does the
same: the step itself tells every process whether any was signalled (mta/train/stopping.py), so
all stop at the same step without a host collective. Checkpoint, log, eval and stop steps are
checked before anything is written, so a non-finite update never reaches a checkpoint; the run
stops at most one step after it.
"""

import sys
import time
from pathlib import Path

import jax
import yaml
from tqdm import tqdm

from mta.config import Config, ConfigError, resume_diff, to_dict, to_yaml
from mta.data import pipeline
from mta.data.tokenizers import record as tokenizer_record
from mta.train import checkpoint
from mta.train.evaluation import Evaluator
from mta.train.faults import StopRequest
from mta.train.feed import Prefetcher, to_device
from mta.train.health import LossSpikeDetector, peak_memory_mb
from mta.train.init_from import init_params, step_dir_of
from mta.train.mesh import batch_sharding, make_mesh
from mta.train.metrics import MetricsWriter
from mta.train.profile import ProfileWindow
from mta.train.state import TrainSetup
from mta.train.step import make_train_step
from mta.train.stopping import StepChecks, Votes


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


def _train_record(
    metrics: dict, steps: int, tokens: int, elapsed: float, spikes, step: int
) -> dict:
    """The metrics.jsonl record of a logged step (metrics fetched): train metrics, speed,
    memory, warnings."""
    record = {k: float(v) for k, v in metrics.items() if k not in ("finite_by_param", "stop")}
    record["step_time_s"] = elapsed / steps
    record["tokens_per_s"] = tokens / elapsed
    record.update(peak_memory_mb())
    warning = spikes.check(record["loss"])
    if warning:
        record["warning"] = warning
        print(f"warning: step {step}: {warning}", file=sys.stderr)
    return record


def train(
    cfg: Config, workdir: str | Path, until_step: int | None = None, allow_config_change=False
) -> dict:
    """Trains to `cfg.train.steps` (or stops after `until_step`, saving a checkpoint there).

    Writes WORKDIR/config.yaml, tokenizer.json (which tokenizer: kind, path, fingerprint),
    metrics.jsonl, tensorboard/ and checkpoints/ (and profile/ with log.profile_steps). Returns
    the last logged metrics (with the final evaluation), plus `stopped_by` if a signal ended the
    run early (the signal's name, or "another process" when it reached another host).
    Raises ConfigError, NonFiniteError or CheckpointWriteError.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    check_resume_config(cfg, workdir, allow_config_change)
    if cfg.train.init_from and not (workdir / "checkpoints").exists():
        step_dir_of(cfg.train.init_from)  # a wrong path fails before the data is built
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
        if cfg.train.init_from:
            abstract_params = setup.abstract_state()["params"]
            params = init_params(cfg.train.init_from, state["params"], abstract_params)
            state = setup.with_optimizer({**state, "params": params})
    elif "opt_state" not in state:  # an imported checkpoint (mta import-hf): weights only
        state = setup.with_optimizer(state)
    if is_main:
        (workdir / "config.yaml").write_text(to_yaml(cfg))
        tokenizer_record.write(workdir, tok)
    step = int(state["step"])
    last_step = min(cfg.train.steps, until_step or cfg.train.steps)

    votes = Votes(mesh) if jax.process_count() > 1 else None  # see mta/train/stopping.py
    step_fn, evaluate = make_train_step(setup, votes=votes is not None), Evaluator(setup)
    data_sharding = batch_sharding(mesh)
    batches = Prefetcher(
        data_iter, lambda local: to_device(local, data_sharding), cfg.data.prefetch
    )
    writer = MetricsWriter(workdir, step, cfg.log.tensorboard, is_main)
    progress = _progress(cfg, step)
    spikes, checks = LossSpikeDetector(), StepChecks(cfg, votes=votes is not None)
    profile = ProfileWindow(cfg.log.profile_steps, workdir)
    record: dict = {}
    steps_since, time_since = 0, time.perf_counter()
    try:
        with jax.set_mesh(mesh), StopRequest() as stop:
            while step < last_step:
                batch = next(batches)
                profile.before(step + 1)
                vote = [votes(stop.signum is not None)] if votes else []
                state, metrics = step_fn(state, batch, *vote)
                step += 1
                steps_since += 1
                profile.after(step, state)
                progress.update(1)
                checks.push(step, state["params"], metrics)
                is_eval = step == cfg.train.steps or (cfg.eval.every and step % cfg.eval.every == 0)
                stopping = checks.stopping(stop.signum is not None)
                is_log = step % cfg.log.every == 0 or is_eval or step == last_step or stopping
                is_save = step % cfg.checkpoint.every == 0 or step == last_step or stopping
                if is_log or is_save:
                    checks.flush()  # nothing of a non-finite step is written
                if is_log:
                    metrics = jax.device_get(metrics)
                    elapsed = time.perf_counter() - time_since
                    tokens = steps_since * cfg.train.batch_size * seq_len
                    record = _train_record(metrics, steps_since, tokens, elapsed, spikes, step)
                    if is_eval:
                        record.update(evaluate(state["params"], eval_data))
                    writer.write(step, record)
                    progress.set_postfix(loss=f"{record['loss']:.4f}")
                    steps_since, time_since = 0, time.perf_counter()
                if is_save:
                    checkpoint.save(manager, step, state, batches.position())
                if stopping:
                    checkpoint.wait(manager)
                    return {"step": step, **record, "stopped_by": stop.signal_name}
        if "eval/exact_match_error" not in record:
            record.update(evaluate(state["params"], eval_data))
        checkpoint.wait(manager)
    finally:
        profile.close()
        batches.close()
        progress.close()
        writer.close()
        try:
            manager.close()
        except Exception:  # a failed save was already raised by checkpoint.save/wait
            pass
    if stop.signum is not None:  # signalled in the last step, before its vote was read
        record["stopped_by"] = stop.signal_name
    return {"step": step, **record}

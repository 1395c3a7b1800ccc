"""Orbax checkpoints of the train state and the data iterator, under WORKDIR/checkpoints.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
process killed mid-write leaves no half checkpoint among the steps. A checkpoint that is complete
but unreadable (a file cut short or removed) is moved to WORKDIR/checkpoints_unreadable/ and the
next older one is used; nothing is deleted. A checkpoint whose parameter tree differs from the
model's (another variant, a renamed parameter) is refused before any array is read, with one
line each for the missing and unexpected parameter paths and the shape mismatches.
"""

import functools
import gc
import shutil
import sys
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from mta.config import CheckpointConfig, ConfigError
from mta.train.faults import CheckpointWriteError


def make_manager(workdir: str | Path, cfg: CheckpointConfig) -> ocp.CheckpointManager:
    """A manager that keeps the newest `cfg.keep` checkpoints and saves asynchronously if asked."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep, enable_async_checkpointing=cfg.async_save, create=True
    )
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_iter) -> None:
    """Starts saving {params, opt_state, step, ...} and the data iterator's position at `step`.

    Raises CheckpointWriteError if this or an earlier asynchronous save failed.
    """
    args = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
        args["data"] = grain.checkpoint.CheckpointSave(data_iter)
    try:
        manager.save(step, args=ocp.args.Composite(**args))
    except Exception as err:  # orbax surfaces write errors of any kind here
        raise _write_error(manager, err) from None


def wait(manager: ocp.CheckpointManager) -> None:
    """Blocks until pending saves are on disk; raises CheckpointWriteError if one failed."""
    try:
        manager.wait_until_finished()
    except Exception as err:
        raise _write_error(manager, err) from None


def _write_error(manager, err: Exception) -> CheckpointWriteError:
    detail = " ".join(str(err).split())[:300]
    return CheckpointWriteError(
        f"could not write a checkpoint in {manager.directory} ({type(err).__name__}: {detail}); "
        "is the disk full or the workdir unwritable? Earlier checkpoints are untouched."
    )


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict, data_iter) -> dict:
    """Restores the state onto the shardings of `abstract_state` (a tree of
    ShapeDtypeStructs with .sharding) and moves `data_iter` to its saved position.

    A checkpoint written by `mta import-hf` holds no optimizer state and no data position: the
    state returned then has no "opt_state" (the caller initialises it) and `data_iter` stays
    at the start of the data."""
    step_dir = Path(manager.directory) / str(step)
    saved = _saved_keys(step_dir)
    if saved is not None and "opt_state" not in saved:
        abstract_state = {key: abstract_state[key] for key in abstract_state if key in saved}
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None and (step_dir / "data").exists():
        args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return manager.restore(step, args=ocp.args.Composite(**args))["state"]


def _saved_keys(step_dir: Path) -> set | None:
    """The top-level keys of a checkpoint's saved state (None if its metadata is unreadable)."""
    try:
        return set(ocp.StandardCheckpointHandler().metadata(step_dir.absolute() / "state").keys())
    except Exception:
        return None


def _shapes(tree) -> dict[str, tuple]:
    """{'blocks.0.attn.kq_pre': shape} of the leaves of a parameter tree."""
    return {
        jax.tree_util.keystr(path, simple=True, separator="."): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _listed(paths: list[str], most: int = 12) -> str:
    more = f" and {len(paths) - most} more" if len(paths) > most else ""
    return ", ".join(paths[:most]) + more


def check_params_fit(step_dir: str | Path, abstract_params, allow_missing: bool = False) -> list:
    """Raises ConfigError if the params saved in checkpoint `step_dir` do not fit the tree of
    `abstract_params`: one line each for the missing paths (unless allow_missing), the
    unexpected ones and the shape mismatches. Returns the model's paths the checkpoint lacks
    (empty when its metadata cannot be read: restoring then reports it as unreadable)."""
    try:
        saved = ocp.StandardCheckpointHandler().metadata(Path(step_dir).absolute() / "state")
        saved = _shapes(saved["params"])
    except Exception:
        return []
    wanted = _shapes(abstract_params)
    missing = sorted(set(wanted) - set(saved))
    unexpected = sorted(set(saved) - set(wanted))
    shapes = [
        f"{path} {saved[path]} -> {wanted[path]}"
        for path in sorted(set(saved) & set(wanted))
        if saved[path] != wanted[path]
    ]
    lines = [
        f"  {name}: {_listed(paths)}"
        for name, paths in (
            ("missing from the checkpoint", [] if allow_missing else missing),
            ("not in the model", unexpected),
            ("shape in the checkpoint -> in the model", shapes),
        )
        if paths
    ]
    if lines:
        raise ConfigError(
            f"checkpoint {step_dir} does not fit this model's parameters "
            "(another model, variant or code version?):\n" + "\n".join(lines)
        )
    return missing


def open_and_restore(
    workdir: str | Path, cfg: CheckpointConfig, abstract_state: dict, data_iter
) -> tuple[ocp.CheckpointManager, dict | None]:
    """Opens WORKDIR/checkpoints and restores the newest readable checkpoint (state None if
    there is none). Unreadable newer ones are reported and moved aside.
    Raises ConfigError (nothing to resume from) if every checkpoint is unreadable, leaving
    them all in place, or if one does not fit the model's parameters (`check_params_fit`).
    """
    manager = make_manager(workdir, cfg)
    unreadable = []
    for step in sorted(manager.all_steps(), reverse=True):
        check_params_fit(Path(manager.directory) / str(step), abstract_state["params"])
        try:
            state = restore(manager, step, abstract_state, data_iter)
        except Exception as err:
            error_name = type(err).__name__
        else:
            if unreadable:
                manager.close()
                _set_aside(unreadable)
                manager = make_manager(workdir, cfg)
            return manager, state
        collect_abandoned_reads()  # here, once the error's traceback no longer holds them
        path = Path(manager.directory) / str(step)
        print(
            f"warning: checkpoint {path} is unreadable ({error_name}); trying an older one",
            file=sys.stderr,
        )
        unreadable.append(path)
    if unreadable:
        raise ConfigError(
            f"no readable checkpoint in {manager.directory} (unreadable: "
            f"{', '.join(p.name for p in unreadable)}); left in place for inspection"
        )
    return manager, None


def collect_abandoned_reads() -> None:
    """Collects the array reads a failed restore left suspended. Collected at exit instead, each
    prints its copy of the read error (a TensorStore spec, dozens of lines) after the one line
    that already reported it, and whether they are left depends on timing: reads still in
    flight now are finalized later (more often with the loop's prefetch thread running), so
    from here on the reports of such abandoned reads are dropped; any other is printed."""
    report = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = functools.partial(_drop_abandoned_reads, report)


def _drop_abandoned_reads(report, unraisable) -> None:
    if getattr(unraisable.object, "__name__", "") != "_read_array_index_and_device_put":
        report(unraisable)


def _set_aside(paths: list[Path]) -> None:
    """Moves unreadable checkpoints to ../checkpoints_unreadable/ (never deletes them)."""
    aside = paths[0].parent.parent / "checkpoints_unreadable"
    aside.mkdir(exist_ok=True)
    for path in paths:
        shutil.move(str(path), str(aside / path.name))
        print(f"warning: moved {path} to {aside / path.name}", file=sys.stderr)

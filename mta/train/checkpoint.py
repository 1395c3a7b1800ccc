"""Orbax checkpoints of the train state and the data iterator, under WORKDIR/checkpoints."""

from pathlib import Path

import grain
import orbax.checkpoint as ocp

from mta.config import CheckpointConfig


def make_manager(workdir: str | Path, cfg: CheckpointConfig) -> ocp.CheckpointManager:
    """A manager that keeps the newest `cfg.keep` checkpoints and saves asynchronously if asked."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep, enable_async_checkpointing=cfg.async_save, create=True
    )
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_iter) -> None:
    """Saves {params, opt_state, step} and the data iterator's position at `step`."""
    args = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
        args["data"] = grain.checkpoint.CheckpointSave(data_iter)
    manager.save(step, args=ocp.args.Composite(**args))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict, data_iter) -> dict:
    """Restores the state onto the shardings of `abstract_state` (a tree of
    ShapeDtypeStructs with .sharding) and moves `data_iter` to its saved position."""
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return manager.restore(step, args=ocp.args.Composite(**args))["state"]

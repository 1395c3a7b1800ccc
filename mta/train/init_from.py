"""`train.init_from`: a new run that starts from another run's weights (a curriculum's next stage
on other data, or a baseline continued with MTA added), with a fresh optimizer, step 0 and its
own data from the start.

Every parameter the checkpoint holds must be in the model with the same shape; parameters of the
model the checkpoint lacks (MTA's kernels when the source is a baseline) keep their fresh init
and are named in one line on stderr.
"""

import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from mta.config import ConfigError
from mta.train.checkpoint import check_params_fit, collect_abandoned_reads


def step_dir_of(source: str) -> Path:
    """The checkpoint `source` names: a run directory (its newest checkpoint) or one checkpoint's
    step directory (RUN/checkpoints/STEP). ConfigError if it holds none."""
    path = Path(source).expanduser()
    if (path / "state").is_dir():
        return path
    steps = [p for p in (path / "checkpoints").glob("*") if p.name.isdigit()]
    steps = [p for p in steps if (p / "state").is_dir()]
    if not steps:
        raise ConfigError(
            f"train.init_from: {source} holds no checkpoint; give a run directory (with "
            "checkpoints/<step>/) or one checkpoint's step directory"
        )
    return max(steps, key=lambda p: int(p.name))


def _without(tree: dict, paths: set[str], prefix: str = "") -> dict:
    """The nested dict `tree` without the leaves at dotted `paths`."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out[key] = _without(value, paths, path + ".")
        elif path not in paths:
            out[key] = value
    return out


def _merge(fresh: dict, loaded: dict) -> dict:
    """fresh's tree with the leaves loaded holds replaced by them."""
    out = {}
    for key, value in fresh.items():
        if isinstance(value, dict):
            out[key] = _merge(value, loaded.get(key, {}))
        else:
            out[key] = loaded.get(key, value)
    return out


def init_params(source: str, fresh_params: dict, abstract_params: dict) -> dict:
    """fresh_params (the model's initialised parameters, a nested dict of arrays) with every
    parameter the checkpoint at `source` holds restored onto abstract_params' shardings.
    ConfigError if the checkpoint holds a parameter the model lacks or one of another shape."""
    step_dir = step_dir_of(source)
    missing = check_params_fit(step_dir, abstract_params, allow_missing=True)
    wanted = {"params": _without(abstract_params, set(missing))}
    restore_args = ocp.checkpoint_utils.construct_restore_args(wanted)
    args = ocp.args.PyTreeRestore(wanted, restore_args=restore_args, partial_restore=True)
    error = None
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            loaded = checkpointer.restore(step_dir.absolute() / "state", args=args)["params"]
    except Exception as err:  # orbax raises many kinds for a damaged checkpoint
        error = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    if error:
        collect_abandoned_reads()  # here, once the error's traceback no longer holds them
        raise ConfigError(f"train.init_from: checkpoint {step_dir} is unreadable ({error})")
    if missing and jax.process_index() == 0:
        print(
            f"init_from {step_dir}: {len(missing)} parameters not in the checkpoint keep their "
            f"fresh init: {', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}",
            file=sys.stderr,
        )
    return _merge(fresh_params, loaded)

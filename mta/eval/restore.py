"""The trained model of a workdir: its config.yaml and the params of one orbax checkpoint.

    step = find_step("runs/x", None)            # the newest; ConfigError if there is none
    loaded = load_model("runs/x", step, rope_theta=None)
    logits = nnx.merge(loaded.graphdef, loaded.params)(tokens_BT)

Nothing in the workdir is written: the checkpoint manager is opened read-only. Only the params
are read (not the optimizer state, twice their size with AdamW).
"""

import dataclasses
from pathlib import Path

import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from mta.config import Config, ConfigError, load_config
from mta.data import pipeline, tokenizers
from mta.data.tokenizers import record
from mta.train.checkpoint import check_params_fit
from mta.train.mesh import make_mesh
from mta.train.state import TrainSetup


@dataclasses.dataclass
class LoadedModel:
    """cfg: the workdir's config (with the rope_theta override applied); params: the pure dict
    of parameter arrays on `mesh`; graphdef: the model's structure, so that
    nnx.merge(graphdef, params) is the Transformer."""

    cfg: Config
    step: int
    graphdef: nnx.GraphDef
    params: dict
    mesh: Mesh
    tok: tokenizers.Tokenizer


def workdir_tokenizer(workdir: str | Path, path: str | None = None) -> tokenizers.Tokenizer:
    """The tokenizer the workdir was trained with: its config's data.tokenizer (the file at
    `path` instead, if given: a moved copy). ConfigError (one line) if the file cannot be read,
    does not fit model.vocab_size, or is not the one WORKDIR/tokenizer.json records."""
    overrides = [] if path is None else [f"data.tokenizer.path={path}"]
    cfg = load_config(Path(workdir) / "config.yaml", overrides)
    tok = pipeline.configured_tokenizer(cfg)
    record.check(workdir, tok)
    return tok


def _manager(workdir: Path) -> ocp.CheckpointManager:
    directory = workdir.absolute() / "checkpoints"
    if not directory.is_dir():
        raise ConfigError(f"no checkpoints in {workdir}: {directory} does not exist")
    options = ocp.CheckpointManagerOptions(create=False)  # never saves: nothing is written
    return ocp.CheckpointManager(directory, options=options)


def find_step(workdir: str | Path, step: int | None) -> int:
    """`step` if the workdir has a checkpoint there, else (None) its newest; ConfigError naming
    the workdir and the available steps otherwise."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise ConfigError(f"workdir not found: {workdir}")
    if not (workdir / "config.yaml").is_file():
        raise ConfigError(f"{workdir} has no config.yaml: is it a training workdir?")
    manager = _manager(workdir)
    steps = sorted(manager.all_steps())
    manager.close()
    if not steps:
        raise ConfigError(f"no checkpoints in {workdir / 'checkpoints'}")
    if step is None:
        return steps[-1]
    if step not in steps:
        available = ", ".join(map(str, steps))
        raise ConfigError(f"no checkpoint at step {step} in {workdir}; available: {available}")
    return step


def _mesh(cfg: Config) -> Mesh:
    """The run's mesh if it fits the devices here, else all devices on the data axis."""
    try:
        return make_mesh(cfg.mesh)
    except (ConfigError, ValueError):
        cfg.mesh = dataclasses.replace(cfg.mesh, data=-1, fsdp=1, tensor=1)
        return make_mesh(cfg.mesh)


def load_model(
    workdir: str | Path, step: int, rope_theta: float | None = None, tokenizer: str | None = None
) -> LoadedModel:
    """Restores the params of checkpoint `step` of `workdir` onto the shardings of
    TrainSetup's abstract params (a partial restore: nothing else is read), with its tokenizer
    (`workdir_tokenizer(workdir, tokenizer)`). rope_theta overrides model.rope_theta (length
    extrapolation); ConfigError for an unreadable checkpoint, another tokenizer, or a checkpoint
    whose parameter tree differs from the model's (one line per kind of difference)."""
    workdir = Path(workdir)
    tok = workdir_tokenizer(workdir, tokenizer)
    overrides = [] if rope_theta is None else [f"model.rope_theta={float(rope_theta)!r}"]
    cfg = load_config(workdir / "config.yaml", overrides)
    mesh = _mesh(cfg)
    setup = TrainSetup(cfg, mesh)
    target = {"params": setup.abstract_state()["params"]}
    params_only = ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
    )
    check_params_fit(workdir.absolute() / "checkpoints" / str(step), target["params"])
    manager = _manager(workdir)
    try:
        state = manager.restore(step, args=ocp.args.Composite(state=params_only))["state"]
    except Exception as err:  # orbax raises many kinds for a damaged or foreign checkpoint
        detail = " ".join(str(err).split())[:200]
        raise ConfigError(
            f"cannot restore checkpoint {step} of {workdir} ({type(err).__name__}: {detail})"
        ) from None
    finally:
        manager.close()
    return LoadedModel(cfg, step, setup.graphdef, state["params"], mesh, tok)

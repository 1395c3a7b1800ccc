"""From a sweep to runs: one ordinary training run (`mta train`) per (variant, seed) in
ROOT/<variant>/seed<k>, every config validated before anything is launched.

A run is `done` when its metrics.jsonl reaches the config's train.steps, `resume` when its workdir
holds checkpoints or metrics (train.py continues it), `new` otherwise.
"""

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mta.ablate.spec import Sweep, SweepError, Variant
from mta.config import Config, ConfigError, load_config, resume_diff, to_dict

REPO = Path(__file__).resolve().parents[2]
TRAIN_MODULE = "mta.cli.train"  # run as `python -m`: no file of a checkout needed


@dataclass(frozen=True)
class Run:
    """One training run of a sweep."""

    variant: Variant
    seed: int
    workdir: Path
    command: tuple[str, ...]  # the exact training command line
    cfg: Config = field(compare=False, repr=False)  # the resolved config

    @property
    def label(self) -> str:
        return f"{self.variant.name}/seed{self.seed}"


def resolve_config(path: str, sweep_path: Path) -> str:
    """A config path as given if it exists from the cwd, else found beside the sweep file or in
    the repository; SweepError if nowhere."""
    given = Path(path)
    if given.is_file():
        return path
    for parent in (sweep_path.parent, REPO):
        if not given.is_absolute() and (parent / given).is_file():
            return str((parent / given).resolve())
    raise SweepError(f"{sweep_path}: config file not found: {path}")


def load_checked(config: str, overrides: list[str]) -> Config:
    """The validated config of a run (the default check; train.py's own can be passed in)."""
    return load_config(config, overrides)


def read_metrics(workdir: Path) -> list[dict]:
    """The records of WORKDIR/metrics.jsonl ([] if there is none; unreadable lines skipped)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill; train.py rewrites the file on resume
    return records


def status(run: Run) -> str:
    """`done`, `resume` or `new` (see the module doc)."""
    records = read_metrics(run.workdir)
    if records and max(r.get("step", 0) for r in records) >= run.cfg.train.steps:
        return "done"
    checkpoints = run.workdir / "checkpoints"
    if records or (checkpoints.is_dir() and any(checkpoints.iterdir())):
        return "resume"
    return "new"


def check_existing(run: Run) -> None:
    """SweepError if the run's workdir was trained with a config that differs from the sweep's
    in more than harmless keys (train.steps, log.*, eval.*, ...)."""
    saved = run.workdir / "config.yaml"
    if not saved.is_file():
        return
    changes = resume_diff(yaml.safe_load(saved.read_text()), to_dict(run.cfg))
    if changes:
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise SweepError(
            f"{run.workdir} was trained with another config ({changes[0]}{more}); "
            "delete it or use another --root"
        )


def plan(
    sweep: Sweep,
    root: str | Path,
    train_script: str | Path | None = None,
    python: str = sys.executable,
    check: Callable[[str, list[str]], Config] = load_checked,
) -> list[Run]:
    """Every (variant, seed) run, its config validated with `check`; SweepError on any error.
    Each run's command is `python -m mta.cli.train ...`, or `python TRAIN_SCRIPT ...`. Runs are
    ordered seed by seed (every variant at the first seed, then at the next), so a sweep stopped
    early has compared every variant at least once."""
    launcher = (python, "-m", TRAIN_MODULE) if train_script is None else (python, str(train_script))
    runs = []
    for variant in sweep.variants:
        config = resolve_config(variant.config or sweep.base, sweep.path)
        base = [*sweep.common, *variant.overrides]
        try:  # once per variant: the seeds differ only in train.seed
            cfg = check(config, [*base, f"train.seed={sweep.seeds[0]}"])
        except ConfigError as err:
            raise SweepError(f"variant {variant.name}: {err}") from None
        for seed in sweep.seeds:
            workdir = Path(root) / variant.name / f"seed{seed}"
            command = (*launcher, "--config", config, "--workdir", str(workdir))
            seeded = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
            runs.append(
                Run(variant, seed, workdir, (*command, *base, f"train.seed={seed}"), seeded)
            )
    runs.sort(key=lambda run: sweep.seeds.index(run.seed))  # stable: variant order within a seed
    for run in runs:
        check_existing(run)
    return runs

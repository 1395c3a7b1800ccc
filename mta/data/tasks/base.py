"""What every task module fills in: typed settings, a `Task` entry, evaluation settings.

A task module holds the task's settings dataclass (the config keys `data.<task>` and
`data.mixture[i].<task>`), its evaluation settings (`Spec` subclasses: the suite keys) with their
scoring functions, and one `TASK = Task(...)`; `mta/data/tasks/__init__.py` lists the modules.
Task modules import no TFDS at load time (`lazy`), so loading a config stays fast.
"""

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mta.data.checks import check_int


@dataclass
class Settings:
    """Base of a task's settings: the keyword arguments of its TFDS config function."""

    def check(self) -> None:
        """Raises ValueError (one line naming the parameter) for impossible settings."""

    def builder_params(self) -> dict[str, Any]:
        """The keyword arguments of the task's TFDS config function for these settings."""
        return dataclasses.asdict(self)

    def example_length(self) -> int | None:
        """len(prompt) + len(answer) when every example has it (then a padded row is that
        long), else None."""
        return None


@dataclass
class GeneratedSettings(Settings):
    """Settings of a generated task: the size of each split and the generation seed."""

    num_train: int = 10_000  # examples in the train split
    num_validation: int = 1000  # examples in the validation split
    num_test: int = 1000  # examples in the test split
    seed: int = 0  # seed of the dataset's generation (another seed, another dataset)

    def check(self) -> None:
        """The split sizes are >= 1 and the seed >= 0; subclasses add the task's own checks."""
        for name in ("num_train", "num_validation", "num_test"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)


@dataclass(frozen=True)
class Cell:
    """One grid point of an evaluation setting: `coords` (what a results table shows, e.g.
    {"length": 1024}) and the `source` task's TFDS config parameters `params` (without split
    sizes)."""

    coords: dict
    source: str
    params: dict


@dataclass(frozen=True)
class Spec:
    """Base of an evaluation setting (one entry of a suite file's `tasks.<name>` list)."""

    num_examples: int | None = None  # None: the suite's num_examples
    seed: int = 0  # the builder's seed (test examples are the same as training's test split)

    def cells(self) -> list[Cell]:
        """The grid points of this setting."""
        raise NotImplementedError

    def check(self) -> None:
        """Raises ValueError (one line) for rules the builders do not check (see `cells`)."""


@dataclass(frozen=True)
class Eval:
    """One evaluation of a task: its suite settings, its scoring and its headline metric.

    `run(runner, records, spec, suite)` returns (rows, samples): rows of metrics (one per
    grid point, or more) and one dict per scored example.
    """

    spec: type[Spec]
    run: Callable
    primary: str


@dataclass(frozen=True)
class Task:
    """A registered task.

    name: the value of `data.task`, and the field `data.<name>` holding `settings`.
    settings: its typed settings (a `Settings` dataclass, every field with a comment).
    make_config: builder parameters -> its TFDS BuilderConfig (ValueError if impossible).
    prepare: (BuilderConfig, data_dir) -> the built TFDS builder.
    evals: evaluation name (a key of a suite's `tasks`) -> `Eval`.
    documents: True if records are whole documents, read in chunks of a row (text): never too
        long, without split sizes, left out of a mixture's exact-match evaluation.
    """

    name: str
    settings: type[Settings]
    make_config: Callable[..., Any]
    prepare: Callable[[Any, str], Any]
    evals: dict[str, Eval] = field(default_factory=dict)
    documents: bool = False


def lazy(module: str, name: str) -> Callable:
    """The function `module.name`, imported on its first call (TFDS builders load slowly)."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call

"""An evaluation suite: a YAML file loaded into typed dataclasses, every value checked.

    suite = load_suite("configs/eval/long_context.yaml")   # SuiteError: one line, key named
    for task, specs in suite.tasks.items():
        for spec in specs:
            for cell in spec.cells(): ...                  # the grid points of the setting

A suite file holds `name`, `num_examples` (test examples per grid point), `batch_size`,
`extra_new_tokens` (greedy tokens generated beyond the answer's length), an optional `data_dir`,
and `tasks`: a mapping of task -> list of settings. A setting lists its grid (e.g. `lengths`,
`depths`) and fixed parameters; any setting may set its own `num_examples` and builder `seed`.
Every grid point is checked by the task's TFDS config function at load time, so an impossible
length fails before any model is restored.
"""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mta.data.tasks import EVALS
from mta.data.tasks import TASKS as DATA_TASKS
from mta.data.tasks.base import Cell, Spec

__all__ = [
    "PRIMARY",
    "TASKS",
    "Cell",
    "Spec",
    "Suite",
    "SuiteError",
    "builder_config",
    "load_suite",
]


class SuiteError(ValueError):
    """A user error in a suite file: one line naming the file, the key and what is allowed."""


# Evaluation name -> its settings dataclass (a `Spec`), from the task registry.
TASKS: dict[str, type[Spec]] = {name: evaluation.spec for name, (_, evaluation) in EVALS.items()}
# Evaluation name -> its headline metric (compared across runs and drawn in heatmaps).
PRIMARY: dict[str, str] = {name: evaluation.primary for name, (_, evaluation) in EVALS.items()}


@dataclass(frozen=True)
class Suite:
    name: str
    num_examples: int
    batch_size: int
    extra_new_tokens: int
    data_dir: str | None
    tasks: dict[str, tuple[Spec, ...]]  # in file order

    def examples(self, spec: Spec) -> int:
        """Test examples per grid point of `spec`."""
        return spec.num_examples or self.num_examples


TOP_LEVEL = {
    "name": str,
    "num_examples": int,
    "batch_size": int,
    "extra_new_tokens": int,
    "data_dir": str | None,
    "tasks": dict,
}
TOP_DEFAULTS = {"num_examples": 100, "batch_size": 8, "extra_new_tokens": 4, "data_dir": None}


def _type_name(tp) -> str:
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        items = "[a, b] pairs" if typing.get_origin(item) else f"{_type_name(item)}s"
        return f"a list of {items}"
    if isinstance(tp, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    names = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """value as type tp (int, float, str, bool, X | None, tuple[X, ...], tuple[int, int]);
    SuiteError naming `where` otherwise. A scalar stands for a one-element list."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if origin is tuple:
        if args[-1] is Ellipsis:
            if not isinstance(value, list):
                if typing.get_origin(args[0]) is tuple:
                    raise SuiteError(f"{where}: expected {_type_name(tp)}, got {value!r}")
                value = [value]
            if not value:
                raise SuiteError(f"{where}: must be a non-empty list")
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, list) or len(value) != len(args):
            raise SuiteError(f"{where}: expected a list of {len(args)} integers, got {value!r}")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in pairs)
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
        dict: isinstance(value, dict),
    }[tp]
    if not ok or (tp is float and not math.isfinite(value)):
        raise SuiteError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return float(value) if tp is float else value


def _check_keys(given: dict, allowed, where: str) -> None:
    unknown = [k for k in given if k not in allowed]
    if unknown:
        raise SuiteError(
            f"{where}: unknown key '{unknown[0]}'; allowed: {', '.join(sorted(allowed))}"
        )


def _spec(task: str, raw: Any, where: str) -> Spec:
    cls = TASKS[task]
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: a setting must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    _check_keys(raw, names, where)
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in raw.items()}
    if values.get("num_examples") is not None and values["num_examples"] < 1:
        raise SuiteError(f"{where}.num_examples: must be >= 1, got {values['num_examples']}")
    spec = cls(**values)
    _check_spec(spec, where)
    return spec


def _check_spec(spec: Spec, where: str) -> None:
    """The setting's own rules (`Spec.check`), then every grid point's builder config."""
    try:
        spec.check()
    except ValueError as err:
        raise SuiteError(f"{where}: {' '.join(str(err).split())}") from None
    for cell in spec.cells():
        try:
            builder_config(cell, 1)
        except ValueError as err:
            raise SuiteError(f"{where} {cell.coords}: {' '.join(str(err).split())}") from None


def builder_config(cell: Cell, num_examples: int):
    """The TFDS config of a cell with `num_examples` test examples (one train and validation
    example: only the test split is read; documents keep their split fractions). ValueError if
    the parameters are impossible."""
    task = DATA_TASKS[cell.source]
    if task.documents:
        return task.make_config(**cell.params)
    return task.make_config(**cell.params, num_train=1, num_validation=1, num_test=num_examples)


def load_suite(path: str | Path) -> Suite:
    """Reads and validates a suite file; SuiteError (one line) for any mistake."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SuiteError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: the top level must be a mapping with a 'tasks' key")
    _check_keys(raw, TOP_LEVEL, str(path))
    top = {**TOP_DEFAULTS, "name": path.stem, **raw}
    if "tasks" not in raw:
        raise SuiteError(f"{path}: missing key 'tasks'; allowed tasks: {', '.join(TASKS)}")
    top = {k: _coerce(v, TOP_LEVEL[k], f"{path}: {k}") for k, v in top.items()}
    for key in ("num_examples", "batch_size"):
        if top[key] < 1:
            raise SuiteError(f"{path}: {key}: must be >= 1, got {top[key]}")
    if top["extra_new_tokens"] < 0:
        raise SuiteError(f"{path}: extra_new_tokens: must be >= 0, got {top['extra_new_tokens']}")
    if not top["tasks"]:
        raise SuiteError(f"{path}: tasks: empty; allowed tasks: {', '.join(TASKS)}")
    tasks = {}
    for task, settings in top["tasks"].items():
        if task not in TASKS:
            raise SuiteError(f"{path}: unknown task '{task}'; allowed: {', '.join(TASKS)}")
        if not isinstance(settings, list) or not settings:
            raise SuiteError(f"{path}: tasks.{task}: must be a non-empty list of settings")
        where = f"{path}: tasks.{task}"
        tasks[task] = tuple(_spec(task, s, f"{where}[{i}]") for i, s in enumerate(settings))
    return Suite(**{**top, "tasks": tasks})

"""The sweep file: a base config, a grid of axes (or explicit variants), seeds, common overrides.

    base: configs/toy/block_baseline_cpu.yaml   # relative to the cwd, the sweep file or the repo
    seeds: [0, 1, 2]                             # one run per seed (sets train.seed)
    common: {train.steps: 2000}                  # overrides of every run
    axes:                                        # the grid: every combination of one value each
      - name: kq
        values:
          - {name: none}
          - name: pre
            overrides: {model.attention.kq_pre.enabled: true, model.attention.kq_pre.c_k: 9}
    metric: eval/exact_match_error               # the bar chart's metric (optional)

Instead of `axes`, `variants` lists the rows explicitly: each {name, overrides, config,
settings}, where `settings` maps column names to what the row sets (the report's columns). A
value or variant may name its own `config` in place of `base`. Overrides are a list of
"key.path=value" strings or a mapping of dotted keys to values; later ones win (common, then the
axes in order). A grid variant is named by its values joined with "-" (e.g. `mta-n5-all`).
"""

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SWEEP_KEYS = ("base", "seeds", "common", "axes", "variants", "metric")
AXIS_KEYS = ("name", "values")
VALUE_KEYS = ("name", "overrides", "config")
VARIANT_KEYS = ("name", "overrides", "config", "settings")
NAME = re.compile(r"^[A-Za-z0-9_+=.,-]+$")


class SweepError(ValueError):
    """A user error in a sweep file: the message is one line naming what is wrong."""


@dataclass(frozen=True)
class Variant:
    """One row of the sweep: its name, its setting per column, config and overrides."""

    name: str
    settings: tuple[tuple[str, str], ...]  # (column, setting) pairs, e.g. (("kq", "pre"),)
    config: str | None  # its own base config, or None for the sweep's `base`
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file."""

    path: Path
    base: str | None
    seeds: tuple[int, ...]
    common: tuple[str, ...]
    columns: tuple[str, ...]  # axis names, or the `settings` keys of the variants
    variants: tuple[Variant, ...]
    metric: str | None


def format_value(value: Any) -> str:
    """A YAML value as the right-hand side of a dotted override (`true`, `2`, `[2, 6]`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def parse_overrides(value: Any, where: str) -> tuple[str, ...]:
    """A list of "key=value" strings or a {dotted.key: value} mapping -> "key=value" strings."""
    if value is None:
        return ()
    if isinstance(value, dict):
        return tuple(f"{key}={format_value(v)}" for key, v in value.items())
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return tuple(value)
    raise SweepError(
        f"{where}: overrides must be a list of 'key.path=value' strings or a mapping of dotted "
        f"keys to values; got {value!r}"
    )


def override_keys(overrides: tuple[str, ...]) -> list[str]:
    """The dotted keys of "key=value" overrides."""
    return [item.split("=", 1)[0].strip() for item in overrides]


def check_keys(item: Any, allowed: tuple[str, ...], where: str, required=("name",)) -> dict:
    """`item` as a dict whose keys are all allowed and include the required ones."""
    if not isinstance(item, dict):
        raise SweepError(f"{where}: expected a mapping with keys {', '.join(allowed)}")
    for key in item:
        if key not in allowed:
            raise SweepError(f"{where}: unknown key '{key}'; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in item:
            raise SweepError(f"{where}: missing '{key}'")
    return item


def check_name(name: Any, where: str) -> str:
    """A name usable as a directory: letters, digits and _+=.,- (ints are turned into text)."""
    name = str(name) if isinstance(name, int) and not isinstance(name, bool) else name
    if not isinstance(name, str) or not NAME.match(name) or name in (".", ".."):
        raise SweepError(f"{where}: name {name!r} must be letters, digits and _+=.,- only")
    return name


def variant_name(value_names: list[str] | tuple[str, ...]) -> str:
    """The name of a grid variant: its values' names joined with "-"."""
    return "-".join(value_names)


def parse_axis(axis: Any, where: str) -> tuple[str, list[dict]]:
    """(axis name, [{name, overrides, config}]) of one entry of `axes`."""
    axis = check_keys(axis, AXIS_KEYS, where, required=AXIS_KEYS)
    name = check_name(axis["name"], where)
    if not isinstance(axis["values"], list) or not axis["values"]:
        raise SweepError(f"{where} ({name}): values must be a non-empty list")
    values = []
    for i, value in enumerate(axis["values"]):
        at = f"{where} ({name}) value {i}"
        value = check_keys(value, VALUE_KEYS, at)
        values.append(
            {
                "name": check_name(value["name"], at),
                "overrides": parse_overrides(value.get("overrides"), at),
                "config": value.get("config"),
            }
        )
    return name, values


def combine(axis_names: list[str], values: tuple[dict, ...]) -> Variant:
    """The variant of one grid point: overrides in axis order, at most one config, no key set by
    two axes."""
    owner, config = {}, None
    for axis, value in zip(axis_names, values, strict=True):
        for key in override_keys(value["overrides"]):
            if owner.setdefault(key, axis) != axis:
                raise SweepError(f"axes {owner[key]} and {axis} both set {key}")
        if value["config"] is not None:
            if config is not None:
                raise SweepError(
                    f"two values of {variant_name([v['name'] for v in values])} set config"
                )
            config = value["config"]
    return Variant(
        name=variant_name([v["name"] for v in values]),
        settings=tuple((axis, v["name"]) for axis, v in zip(axis_names, values, strict=True)),
        config=config,
        overrides=tuple(o for v in values for o in v["overrides"]),
    )


def expand_grid(axes: list[tuple[str, list[dict]]]) -> list[Variant]:
    """Every combination of one value per axis, the first axis varying slowest."""
    names = [name for name, _ in axes]
    return [combine(names, point) for point in itertools.product(*(v for _, v in axes))]


def parse_variant(item: Any, where: str) -> Variant:
    """One entry of `variants`."""
    item = check_keys(item, VARIANT_KEYS, where)
    settings = item.get("settings") or {}
    if not isinstance(settings, dict):
        raise SweepError(f"{where}: settings must be a mapping of column names to settings")
    return Variant(
        name=check_name(item["name"], where),
        settings=tuple((str(k), format_value(v)) for k, v in settings.items()),
        config=item.get("config"),
        overrides=parse_overrides(item.get("overrides"), where),
    )


def parse_seeds(seeds: Any, where: str) -> tuple[int, ...]:
    """A non-empty list of distinct non-negative integers."""
    ok = isinstance(seeds, list) and seeds and len(set(seeds)) == len(seeds)
    if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise SweepError(f"{where}: seeds must be a non-empty list of distinct integers >= 0")
    return tuple(seeds)


def parse_variants(data: dict, where: str) -> list[Variant]:
    """The rows of a sweep, from exactly one of `axes` and `variants`."""
    if ("axes" in data) == ("variants" in data):
        raise SweepError(f"{where}: give exactly one of 'axes' (a grid) and 'variants' (a list)")
    key = "axes" if "axes" in data else "variants"
    if not isinstance(data[key], list) or not data[key]:
        raise SweepError(f"{where}: {key} must be a non-empty list")
    if key == "axes":
        axes = [parse_axis(a, f"{where}: axis {i}") for i, a in enumerate(data["axes"])]
        if len({name for name, _ in axes}) < len(axes):
            raise SweepError(f"{where}: two axes have the same name")
        variants = expand_grid(axes)
    else:
        variants = [parse_variant(v, f"{where}: variant {i}") for i, v in enumerate(data[key])]
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SweepError(f"{where}: more than one variant is named {duplicates[0]}")
    return variants


def parse_sweep(data: Any, path: str | Path) -> Sweep:
    """Validates a sweep file's contents and expands its grid."""
    where = str(path)
    data = check_keys(data, SWEEP_KEYS, where, required=())
    variants = parse_variants(data, where)
    common = parse_overrides(data.get("common"), f"{where}: common")
    for v in variants:
        if "train.seed" in override_keys(common + v.overrides):
            raise SweepError(f"{where}: train.seed is set by 'seeds', not by overrides")
        if v.config is None and data.get("base") is None:
            raise SweepError(f"{where}: variant {v.name} has no config; set 'base'")
    metric = data.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise SweepError(f"{where}: metric must be a metrics.jsonl key like eval/loss")
    columns = dict.fromkeys(column for v in variants for column, _ in v.settings)
    return Sweep(
        path=Path(path),
        base=data.get("base"),
        seeds=parse_seeds(data.get("seeds", [0]), f"{where}: seeds"),
        common=common,
        columns=tuple(columns),
        variants=tuple(variants),
        metric=metric,
    )


def load_sweep(path: str | Path) -> Sweep:
    """Reads and validates a sweep file; SweepError (one line) if it is missing or wrong."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    return parse_sweep(data, path)

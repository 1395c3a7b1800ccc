"""Loading a config: YAML files and dotted overrides merged over the schema's defaults, with the
data section's members and legacy keys checked and upgraded on the way."""

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mta.config.checks import MIXTURE_EXAMPLE, _one_line, validate
from mta.config.schema import TASKS, Config, ConfigError, MixtureMember, SourceConfig, to_dict
from mta.data.tasks.corpus import SOURCE_EXAMPLE


def _omegaconf_error(err: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    msg = _one_line(str(err).splitlines()[0] if str(err) else type(err).__name__)
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        parent = key.rsplit(".", 1)[0] if key and "." in key else ""
        allowed = _field_names(parent)
        return ConfigError(f"{where}: unknown key '{key}'; allowed here: {', '.join(allowed)}")
    return ConfigError(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")


def _field_names(dotted_parent: str) -> list[str]:
    node: Any = Config
    for part in filter(None, dotted_parent.split(".")):
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields or not dataclasses.is_dataclass(fields[part].default_factory):
            return []
        node = fields[part].default_factory
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Reads a YAML file (defaults if None), applies `key.path=value` overrides, validates."""
    base = OmegaConf.structured(Config)
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {_one_line(err)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        layers.append((str(path), OmegaConf.create(loaded)))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        layers.append((f"override '{item}'", OmegaConf.from_dotlist([item])))
    merged = base
    for where, layer in layers:
        layer = _data_layer(layer, merged, where)
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            raise _omegaconf_error(err, where) from None
    cfg = OmegaConf.to_object(merged)
    # YAML reads a bare on/off as a boolean, which the str field then holds as "True"/"False"
    cfg.log.progress = {"True": "on", "False": "off"}.get(cfg.log.progress, cfg.log.progress)
    validate(cfg)
    return cfg


def _legacy_params(params: Any, task: str, where: str) -> dict:
    """A `params` mapping of a config written before the typed task sections, as the settings
    of `task` (its section data.<task>); ConfigError for a key the task does not have."""
    allowed = [f.name for f in dataclasses.fields(TASKS[task].settings)]
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: must be a mapping of settings; allowed: {', '.join(allowed)}")
    unknown = [name for name in params if name not in allowed]
    if unknown:
        raise ConfigError(
            f"{where}: unknown parameter {unknown[0]!r}; allowed: {', '.join(allowed)}"
        )
    if isinstance(params.get("depths"), int):  # niah_config took one depth as an int
        return {**params, "depths": [params["depths"]]}
    return params


def _upgrade(section: dict, task: str | None, key: str, where: str) -> None:
    """Moves a legacy `params` mapping of `section` (data, or a member of data.mixture) into
    the section of its `task`, in place."""
    if "params" not in section:
        return
    params = section.pop("params")
    if task == "mix" and params:
        raise ConfigError(
            f"{where}: {key}.params: not used with data.task: mix; give each member its own "
            "settings in data.mixture"
        )
    if task in TASKS and params:
        settings = _legacy_params(params, task, f"{where}: {key}.params of task {task}")
        section[task] = {**(section.get(task) or {}), **settings}


def _data_layer(layer: DictConfig, merged: DictConfig, where: str) -> DictConfig:
    """The layer with its data section checked and upgraded: legacy `params` moved into the
    task's section, data.mixture a list of members without unknown keys (OmegaConf would name
    such a key without the member's index). An override of one member, data.mixture.0.weight=2,
    becomes the whole list with that member updated."""
    data = layer.get("data")
    if not isinstance(data, DictConfig):
        return layer
    container = OmegaConf.to_container(layer)
    data = container["data"]
    _upgrade(data, data.get("task", merged.data.task), "data", where)
    _check_sources(data.get("sources"), where)
    mixture = data.get("mixture")
    if mixture is None:
        return OmegaConf.create(container)
    members = None
    if isinstance(mixture, list):
        members = dict(enumerate(mixture))
    elif isinstance(mixture, dict) and mixture and all(str(k).isdigit() for k in mixture):
        members = {int(k): v for k, v in mixture.items()}
    if members is None or not all(isinstance(m, dict) for m in members.values()):
        raise ConfigError(
            f"{where}: data.mixture must be a list of members like {MIXTURE_EXAMPLE}; "
            f"got {mixture!r}"
        )
    current = merged.data.mixture
    if not isinstance(mixture, list) and max(members) >= len(current):
        raise ConfigError(
            f"{where}: data.mixture[{max(members)}]: no such member; the mixture has "
            f"{len(current)} (indices from 0)"
        )
    for index, member in members.items():
        at = f"data.mixture[{index}]"
        task = member.get("task") or (current[index].task if index < len(current) else None)
        _upgrade(member, task, at, where)
        _check_keys(member, MixtureMember, f"{where}: {at}")
        for name, section in member.items():
            if name in TASKS and isinstance(section, dict):
                _check_keys(section, TASKS[name].settings, f"{where}: {at}.{name}")
        try:
            OmegaConf.merge(OmegaConf.structured(MixtureMember), member)
        except OmegaConfBaseException as err:
            raise _omegaconf_error(err, f"{where}: {at}") from None
    if not isinstance(mixture, list):
        updated = [OmegaConf.merge(m, members.get(i, {})) for i, m in enumerate(current)]
        data["mixture"] = [OmegaConf.to_container(m) for m in updated]
    return OmegaConf.create(container)


def _check_sources(sources: Any, where: str) -> None:
    """data.sources of a layer: a list of mappings of SourceConfig's keys (OmegaConf would
    name an unknown key without the source's index)."""
    if sources is None:
        return
    if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
        raise ConfigError(
            f"{where}: data.sources must be a list of sources like {SOURCE_EXAMPLE}; "
            f"got {sources!r}"
        )
    for index, source in enumerate(sources):
        _check_keys(source, SourceConfig, f"{where}: data.sources[{index}]")


def _check_keys(given: dict, schema: type, where: str) -> None:
    allowed = [f.name for f in dataclasses.fields(schema)]
    unknown = [key for key in given if key not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'; allowed: {', '.join(allowed)}")


def upgrade_saved(saved: dict) -> dict:
    """A resolved config as a workdir stores it (plain dicts, maybe written before the typed
    task sections) in today's form: legacy `params` moved into the task sections, every
    mixture member complete with its defaults. Raises ConfigError for a bad legacy key."""
    saved = copy.deepcopy(saved)
    data = saved.get("data")
    if not isinstance(data, dict):
        return saved
    _upgrade(data, data.get("task"), "data", "saved config")
    defaults = to_dict(MixtureMember())
    members = data.get("mixture") or []
    for index, member in enumerate(members):
        _upgrade(member, member.get("task"), f"data.mixture[{index}]", "saved config")
        members[index] = {**defaults, **member}
        for name in TASKS:
            members[index][name] = {**defaults[name], **(member.get(name) or {})}
    return saved

"""The resolved config a workdir stores, and which changes a resumed run may make."""

from typing import Any

from mta.config.load import upgrade_saved
from mta.config.schema import Config, to_dict

HARMLESS_ON_RESUME = (
    "train.steps",
    "train.run_ahead",
    "data.prefetch",
    "train.peer_timeout",
    "train.init_from",  # read only when a run starts
    "model.attention.impl",
    "model.tuned_vjp",
    "log.",
    "eval.",
    "checkpoint.every",
    "checkpoint.keep",
    "checkpoint.async_save",
    "data.data_dir",
    "data.corpus.workers",  # the same records with any number of workers
    "mesh.",
)


def _flatten(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def resume_diff(saved: dict, new: dict) -> list[str]:
    """The keys whose change would make a resumed run differ from the saved one, as
    'key: old -> new' lines (harmless keys such as train.steps or log.every are left out)."""
    old_flat, new_flat = _flatten(upgrade_saved(saved)), _flatten(new)
    defaults = _flatten(to_dict(Config()))
    changed = []
    for key in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(key) == new_flat.get(key):
            continue
        if key not in old_flat and key in defaults and new_flat.get(key) == defaults[key]:
            continue  # a key added to the schema after the run was saved, at its default
        if any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS_ON_RESUME):
            continue
        changed.append(f"{key}: {old_flat.get(key)!r} -> {new_flat.get(key)!r}")
    return changed

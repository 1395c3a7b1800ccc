"""The `--dry-run` summary: exact parameter count, attention per layer, mesh, sharding, memory."""

import jax
import numpy as np
from jax.sharding import NamedSharding

from mta.config import Config, kq_layer_indices
from mta.model import count_params
from mta.train.mesh import mesh_shape, tensor_parallel_plan


def layer_kinds(cfg: Config) -> list[str]:
    """The attention of each layer in short, e.g. 'mta(kq_pre 6x11, head_pre linear)',
    'fox(qk_norm, output_gate elementwise)' or 'softmax(canon AC)'."""
    a = cfg.model.attention
    kq_layers = set(kq_layer_indices(a.kq_layers, cfg.model.num_layers))
    extras = _extras(cfg)
    kinds = []
    for layer in range(cfg.model.num_layers):
        parts = []
        for name in ("kq_pre", "kq_post"):
            conv = getattr(a, name)
            if a.kind == "softmax" and conv.enabled and layer in kq_layers:
                parts.append(f"{name} {conv.c_q}x{conv.c_k}")
        for name in ("head_pre", "head_post", "group_norm"):
            if a.kind == "softmax" and getattr(a, name) != "none":
                parts.append(f"{name} {getattr(a, name)}")
        name = "mta" if parts else a.kind
        parts += extras
        kinds.append(f"{name}({', '.join(parts)})" if parts else name)
    return kinds


def _extras(cfg: Config) -> list[str]:
    """The switches any kind may have (qk_norm, output gate, Canon, RoPE where not the default)."""
    a, m = cfg.model.attention, cfg.model
    extras = ["attend_current"] if a.attend_current else []
    extras += ["qk_norm"] if a.qk_norm else []
    extras += [f"output_gate {a.output_gate}"] if a.output_gate != "none" else []
    if m.canon != "none":
        extras.append(f"canon {m.canon}" + (f" x{m.canon_kernel}" if m.canon_kernel != 4 else ""))
    extras += [f"rope {a.rope}"] if a.rope != "auto" else []
    return extras


def sharding_plan(abstract_params: dict, params_shardings: dict) -> dict:
    """Where each parameter lives: {name with layer numbers as *: {shape, spec (mesh axis per
    dimension), layers (how many such parameters), bytes_per_device (each)}}."""
    plan = {}
    flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    shardings = jax.tree.leaves(params_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sharding in zip(flat, shardings, strict=True):
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        name = ".".join("*" if key.isdigit() else key for key in keys)
        if name in plan:
            plan[name]["layers"] += 1
            continue
        shard = sharding.shard_shape(leaf.shape)
        plan[name] = {
            "shape": list(leaf.shape),
            "spec": [axis for axis in sharding.spec] + [None] * (leaf.ndim - len(sharding.spec)),
            "layers": 1,
            "bytes_per_device": int(np.prod(shard)) * leaf.dtype.itemsize,
        }
    return plan


def summary(
    cfg: Config, abstract_state: dict, seq_len: int, params_shardings: dict, memory: dict
) -> dict:
    """The JSON-ready summary printed by `mta train --dry-run`; `memory` is bytes per device
    from mta/train/memory.py (with its `source` and `total`)."""
    devices = jax.device_count()
    return {
        "params": count_params(abstract_state["params"]),
        "layers": layer_kinds(cfg),
        "mesh": dict(zip(("data", "fsdp", "tensor"), mesh_shape(cfg.mesh, devices), strict=True)),
        "attention_tensor_parallel": tensor_parallel_plan(cfg),
        "sharding_plan": sharding_plan(abstract_state["params"], params_shardings),
        "devices": devices,
        "seq_len": seq_len,
        "memory_per_device_bytes": memory,
        "memory_per_device_gb": round(float(np.float64(memory["total"]) / 2**30), 3),
    }

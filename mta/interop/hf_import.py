"""Hugging Face Llama checkpoint -> step 0 of an orbax checkpoint in a workdir.

    summary = import_hf("Llama-3.2-1B/", "configs/lm/llama_1B_continue_mta.yaml", "runs/x")

The config gives the run (data, training, attention variant); the model's shapes, tying, RoPE
and eps come from config.json (a config that sets them otherwise is refused in one line). The
workdir gets config.yaml, hf/tokenizer.json (a copy, data.tokenizer points at it),
hf/config.json (the source's) and checkpoints/0 holding the parameters only (`mta train`
starts the optimizer state fresh and the data from its beginning).

Parameters without a Llama counterpart (MTA's kernels and head mixing) start at their identity
init, so the imported model computes the checkpoint's function; those that change it at init
(group norm, gating, depth scaling) are named in one warning line; those with no identity
(QK-norm, output gates, Canon layers, another attention kind) are refused. An export of this
project (`mta export-hf`) brings those parameters along and they are read instead.
"""

import json
import logging
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import yaml
from flax import nnx

from mta.config import Config, ConfigError, load_config, to_yaml
from mta.interop import hf_weights
from mta.interop.hf_config import HFConfigError, model_overrides
from mta.interop.hf_files import Checkpoint, open_checkpoint

AT_IDENTITY = ("kq_pre", "kq_post", "head_pre", "head_post")  # identity init: no change
CHANGES = {  # added at init, changes the function: what it does
    "out_norm": "group norm (RMSNorm of each head's output)",
    "gate_w": "a sigmoid gate on each head's output (about 0.5 at init)",
}
DTYPES = ("F32", "BF16", "F16")


def _explicit_model_keys(config_path, overrides) -> set[str]:
    """The model.* keys the config file or the overrides set."""
    keys = set()

    def walk(tree, prefix):
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                keys.add(f"{prefix}{key}")

    try:
        raw = yaml.safe_load(Path(config_path).read_text()) if config_path else {}
    except (OSError, yaml.YAMLError):
        raw = {}  # load_config reports it
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        walk(raw["model"], "model.")
    for item in overrides:
        key = item.partition("=")[0]
        keys.update({key} if key.startswith("model.") else set())
        if key in ("model.rope_scaling",):  # a whole section given as one override
            keys.update(f"model.rope_scaling.{k}" for k in ("kind", "factor"))
    return keys


def _value(cfg: Config, key: str):
    """A model.* value as the model reads it (0 heads/head_dim resolved)."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    m = cfg.model
    if key == "model.num_kv_heads":
        return node or m.num_heads
    if key == "model.head_dim":
        return node or m.dim // m.num_heads
    return node


def configure(hf: dict, config_path, overrides, tokenizer_path: Path) -> Config:
    """The run config: `config_path` + overrides, with the model keys of config.json and the
    checkpoint's tokenizer; ConfigError naming a model key the config sets otherwise."""
    values = model_overrides(hf)
    explicit = _explicit_model_keys(config_path, overrides) & set(values)
    tokenizer = ["data.tokenizer.kind=huggingface", f"data.tokenizer.path={tokenizer_path}"]
    implicit = _dotted(values, set(values) - explicit)
    given = load_config(config_path, [*overrides, *implicit, *tokenizer])
    for key in sorted(explicit):
        if _value(given, key) != values[key]:
            raise ConfigError(
                f"{key}: the config sets {_value(given, key)!r} but the checkpoint's config.json "
                f"has {values[key]!r}; leave the model's shape keys to config.json"
            )
    return load_config(config_path, [*overrides, *_dotted(values, set(values)), *tokenizer])


def _dotted(values: dict, keys: set) -> list[str]:
    """`key=value` overrides of `values` at `keys`."""
    return [
        f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in values.items() if k in keys
    ]


def _plan(ckpt: Checkpoint, abstract: dict, tied: bool):
    """({params path: (hf name, layout, shape)} to read, [params paths] to initialise);
    HFConfigError listing missing, unexpected or misshapen tensors."""
    read, init, missing, shapes = {}, [], [], []
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        path = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in key_path)
        name, layout, llama = hf_weights.hf_name(path)
        if name not in ckpt.shapes:
            (missing if llama else init).append(name if llama else path)
            continue
        want = hf_weights.hf_shape(leaf.shape, layout)
        if ckpt.shapes[name] != want:
            shapes.append(f"{name} {ckpt.shapes[name]} (the model needs {want})")
        read[path] = (name, layout, tuple(leaf.shape))
    names = {name for name, _, _ in read.values()}
    unexpected = [
        n for n in ckpt.shapes
        if n not in names and not n.endswith(hf_weights.IGNORED_SUFFIXES)
        and not (tied and n == "lm_head.weight")
    ]  # fmt: skip
    for what, items in (("missing", missing), ("unexpected", unexpected), ("shape of", shapes)):
        if items:
            more = f" and {len(items) - 4} more" if len(items) > 4 else ""
            raise HFConfigError(
                f"checkpoint tensors {what}: {', '.join(items[:4])}{more} (does the config's "
                "attention fit the checkpoint? see docs/interop.md)"
            )
    bad = [n for n in names if ckpt.dtypes[n] not in DTYPES]
    if bad:
        raise HFConfigError(f"{bad[0]}: dtype {ckpt.dtypes[bad[0]]}; readable: {DTYPES}")
    return read, init


def _check_init(cfg: Config, init: list) -> list[str]:
    """Warnings for initialised parameters that change the function; ConfigError for those
    with no identity."""
    a = cfg.model.attention
    if a.kernel_init != "identity" and any(p[-1] in ("kq_pre", "kq_post") for p in init):
        raise ConfigError(
            f"model.attention.kernel_init: {a.kernel_init}; an imported model starts its "
            "key-query kernels at identity (set identity)"
        )
    changes = set()
    for path in init:
        if path[-1] in CHANGES:
            changes.add(CHANGES[path[-1]])
        elif path[-1] not in AT_IDENTITY and path[-1] != "gate_b":
            where = ".".join(map(str, path))
            raise ConfigError(
                f"{where}: this config adds a parameter with no identity init (from "
                "model.attention.kind, qk_norm, output_gate or model.canon), so the imported "
                "model would not compute the checkpoint's function; import into kind softmax "
                "(baseline or MTA)"
            )
    if a.group_norm == "depth_scaling":
        changes.add("depth scaling (each head's output times 1 - lambda_init(layer))")
    if changes:
        return [
            f"model.attention.group_norm={a.group_norm} adds {' and '.join(sorted(changes))}: "
            "the imported model's outputs differ from the checkpoint's at step 0"
        ]
    return []


def _initial(cfg: Config, paths: list) -> dict:
    """The model's own init of the parameters at `paths`, computed without materialising the
    others (jit drops the rest of the init)."""
    from mta.model import Transformer
    from mta.resolve import resolve_model

    if not paths:
        return {}
    settings = resolve_model(cfg.model)

    def init():
        pure = nnx.state(Transformer(settings, nnx.Rngs(cfg.train.seed))).to_pure_dict()
        out = {}
        for path in paths:
            node = pure
            for part in path:
                node = node[part]
            out[path] = node
        return out

    return jax.jit(init)()


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _save(workdir: Path, state: dict) -> None:
    """Writes `state` (numpy leaves) as checkpoint 0 of WORKDIR/checkpoints, adding little
    memory: orbax's defaults deep-copy numpy arrays and buffer a whole OCDBT transaction (about
    2x the model together); here neither, with 256 MB in flight. Training reads this format and
    writes its own checkpoints in the default one."""
    th = ocp.type_handlers
    registry = th.create_type_handler_registry(
        (np.number, th.ScalarHandler()),
        (np.ndarray, th.NumpyHandler(deepcopy_host_arrays=False)),
    )
    handler = ocp.PyTreeCheckpointHandler(
        type_handler_registry=registry, save_concurrent_gb=0.25, use_ocdbt=False
    )
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True)
    manager = ocp.CheckpointManager(
        workdir.absolute() / "checkpoints", options=options, item_handlers={"state": handler}
    )
    absl_logger = logging.getLogger("absl")  # a warning that no OCDBT files exist to merge
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        manager.save(0, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
        manager.wait_until_finished()
    finally:
        absl_logger.setLevel(level)
        manager.close()


def import_hf(hf_dir, config_path, workdir, overrides=()) -> dict:
    """Imports the checkpoint in `hf_dir` into `workdir` (which must hold no checkpoints) under
    the config `config_path` (+ dotted overrides). Returns a summary {workdir, params, read,
    initialised, warnings}. ConfigError (HFConfigError) for anything it cannot import."""
    from mta.data import pipeline
    from mta.data.tokenizers import record
    from mta.train.state import abstract_model

    workdir = Path(workdir)
    if (workdir / "checkpoints").exists():
        raise ConfigError(f"{workdir} already has checkpoints; import into a new workdir")
    ckpt = open_checkpoint(hf_dir)
    tokenizer_copy = workdir.absolute() / "hf" / "tokenizer.json"
    cfg = configure(ckpt.config, config_path, overrides, ckpt.tokenizer)
    pipeline.configured_tokenizer(cfg)  # the checkpoint's tokenizer fits its vocabulary
    abstract = abstract_model(cfg)[1].to_pure_dict()
    read, init = _plan(ckpt, abstract, cfg.model.tie_embeddings)
    warnings = _check_init(cfg, init)

    (workdir / "hf").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ckpt.tokenizer, tokenizer_copy)
    (workdir / "hf" / "config.json").write_text(json.dumps(ckpt.config, indent=1) + "\n")
    cfg.data.tokenizer.path = str(tokenizer_copy)
    tok = pipeline.configured_tokenizer(cfg)

    flat = {path: np.asarray(value) for path, value in _initial(cfg, init).items()}
    by_name = {name: (path, layout, shape) for path, (name, layout, shape) in read.items()}
    for name, tensor in ckpt.tensors(by_name):
        path, layout, shape = by_name[name]
        flat[path] = hf_weights.to_ours(tensor.astype(np.float32, copy=False), shape, layout)
        del tensor
    _save(workdir, {"params": _nest(flat), "step": np.int32(0), "skipped": np.int32(0)})
    (workdir / "config.yaml").write_text(to_yaml(cfg))
    record.write(workdir, tok)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    return {
        "workdir": str(workdir),
        "step": 0,
        "params": int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(abstract))),
        "read": len(read),
        "initialised": [".".join(map(str, p)) for p in init],
        "warnings": warnings,
    }

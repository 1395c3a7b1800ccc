"""The schema of a run: typed dataclasses, loaded from YAML with dotted command-line overrides.

    cfg = load_config("configs/toy/block_mta.yaml", ["train.steps=200", "model.dim=128"])

Unknown keys, wrong types and impossible values raise ConfigError with one line naming the key
and what is allowed. `to_yaml(cfg)` gives the resolved config that a workdir stores.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A user error in a config: the message is one line naming the key and what is allowed."""


@dataclass
class KQConvConfig:
    """A key-query convolution: `c_q` query taps (past only) x `c_k` key taps (centred, odd)."""

    enabled: bool = False
    c_q: int = 6
    c_k: int = 11


@dataclass
class AttentionConfig:
    """Attention variant. With every MTA part off this is standard causal attention."""

    kind: str = "softmax"  # softmax (baseline, talking heads, MTA) | diff (DIFF Transformer)
    impl: str = "dense"  # dense | blockwise (O(T) memory) | auto (blockwise for long inputs)
    kq_pre: KQConvConfig = field(default_factory=KQConvConfig)
    kq_post: KQConvConfig = field(default_factory=KQConvConfig)
    # Layers with key-query convolution: "all", an explicit list of 0-based layers like
    # [2, 6, 10], or {every: 4, start: 2}.
    kq_layers: Any = "all"
    head_pre: str = "none"  # none | linear ([H, H]) | grouped ([H/c_h, c_h, c_h]) | conv3d
    head_post: str = "none"  # none | grouped
    head_group_size: int = 0  # c_h; 0 means all heads in one group
    group_norm: str = "none"  # none | gating | depth_scaling
    kernel_init: str = "identity"  # identity | constant | zero | uniform
    kernel_init_value: float = 0.3  # the constant of `constant`, the half-width of `uniform`
    decay_mta_params: bool = True  # apply weight decay to MTA kernels, mixing and norm weights


@dataclass
class ModelConfig:
    vocab_size: int = 259  # the byte tokenizer's 256 bytes + pad, bos, eos
    dim: int = 64
    num_layers: int = 4
    num_heads: int = 2
    num_kv_heads: int = 0  # 0 means num_heads (MHA); 1 is MQA; in between is GQA
    head_dim: int = 0  # 0 means dim // num_heads
    mlp_hidden: int = 256
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    scale_output_init: bool = False  # divide output projections' init std by sqrt(2 * layers)
    compute_dtype: str = "float32"  # float32 | bfloat16 (parameters stay float32)
    remat: str = "none"  # none | block | attention: recompute these in the backward pass
    attention: AttentionConfig = field(default_factory=AttentionConfig)


@dataclass
class BlockTaskConfig:
    """The "find the block" toy task of MTA_SPEC.md."""

    n: int = 5  # letters per block
    l: int = 2  # noqa: E741  query letters
    variant: str = "all"  # all | first | last
    length: int = 319  # prompt + answer characters
    num_blocks: int = 0  # 0 means as many as fit in `length`
    num_train: int = 100_000
    num_validation: int = 1000
    num_test: int = 1000
    seed: int = 0


@dataclass
class DataConfig:
    task: str = "block"  # block | mqar | niah | babi | vartrack | text
    data_dir: str = "~/tensorflow_datasets"  # where TFDS builds and reads datasets
    seq_len: int = 2048  # tokens per training row (the block task sets its own)
    packing: str = "pad"  # pad (one example per row) | pack (first-fit, with segment ids)
    too_long: str = "drop"  # an example longer than seq_len: drop | truncate (text is chunked)
    block: BlockTaskConfig = field(default_factory=BlockTaskConfig)
    # Builder parameters of the other tasks, e.g. {num_needles: 2, length: 1024} for niah
    # (see mta/data/tfds_<task>.py: <task>_config).
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32  # global, over all devices and hosts
    seed: int = 0
    lr: float = 1e-3
    warmup_steps: int = 100
    schedule: str = "constant"  # constant | linear | cosine (after warmup)
    min_lr_ratio: float = 0.0  # final lr of linear/cosine as a fraction of lr
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    clip_norm: float = 1.0  # global-norm clipping; 0 disables it
    skip_nonfinite: bool = False  # skip (and count) updates with NaN/Inf instead of stopping
    grad_accum: int = 1  # micro-batches per step (gradient accumulation)


@dataclass
class MeshConfig:
    """Device mesh sizes; -1 fills the remaining devices. Product must equal the device count."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # Logical parameter axis -> mesh axis (or null: replicated along that dimension).
    rules: dict[str, Any] = field(
        default_factory=lambda: {
            "embed": "fsdp",
            "vocab": "tensor",
            "heads": "tensor",
            "kv_heads": "tensor",
            "mlp": "tensor",
            "norm": None,
        }
    )


@dataclass
class CheckpointConfig:
    every: int = 500
    keep: int = 3
    async_save: bool = True


@dataclass
class LogConfig:
    every: int = 50
    tensorboard: bool = True
    progress: str = "auto"  # auto (only in a terminal) | on | off


@dataclass
class EvalConfig:
    every: int = 500  # 0 evaluates only at the end
    split: str = "validation"
    num_examples: int = 1000
    batch_size: int = 100


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


CHOICES = {
    "model.attention.kind": ("softmax", "diff"),
    "model.attention.impl": ("dense", "blockwise", "auto"),
    "model.attention.head_pre": ("none", "linear", "grouped", "conv3d"),
    "model.attention.head_post": ("none", "grouped"),
    "model.attention.group_norm": ("none", "gating", "depth_scaling"),
    "model.attention.kernel_init": ("identity", "constant", "zero", "uniform"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "block", "attention"),
    "data.task": ("block", "mqar", "niah", "babi", "vartrack", "text"),
    "data.packing": ("pad", "pack"),
    "data.too_long": ("drop", "truncate"),
    "data.block.variant": ("all", "first", "last"),
    "train.schedule": ("constant", "linear", "cosine"),
    "log.progress": ("auto", "on", "off"),
    "eval.split": ("train", "validation", "test"),
}

POSITIVE = (
    "model.vocab_size",
    "model.dim",
    "model.num_layers",
    "model.num_heads",
    "model.mlp_hidden",
    "model.rope_theta",
    "model.norm_eps",
    "model.attention.kq_pre.c_q",
    "model.attention.kq_pre.c_k",
    "model.attention.kq_post.c_q",
    "model.attention.kq_post.c_k",
    "data.seq_len",
    "data.block.n",
    "data.block.l",
    "data.block.length",
    "data.block.num_train",
    "data.block.num_validation",
    "data.block.num_test",
    "train.steps",
    "train.batch_size",
    "train.grad_accum",
    "checkpoint.every",
    "checkpoint.keep",
    "log.every",
    "eval.num_examples",
    "eval.batch_size",
)
NON_NEGATIVE = (
    "model.num_kv_heads",
    "model.head_dim",
    "model.init_std",
    "model.attention.head_group_size",
    "data.block.num_blocks",
    "data.block.seed",
    "train.seed",
    "train.lr",
    "train.warmup_steps",
    "train.weight_decay",
    "train.clip_norm",
    "train.min_lr_ratio",
    "eval.every",
)


def _get(cfg: Config, dotted: str) -> Any:
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


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
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            raise _omegaconf_error(err, where) from None
    cfg = OmegaConf.to_object(merged)
    validate(cfg)
    return cfg


def kq_layer_indices(spec: Any, num_layers: int) -> list[int]:
    """The 0-based layers that get key-query convolution, from `model.attention.kq_layers`."""
    key = "model.attention.kq_layers"
    if spec == "all":
        return list(range(num_layers))
    if isinstance(spec, list | tuple) and all(isinstance(i, int) for i in spec):
        bad = [i for i in spec if not 0 <= i < num_layers]
        if bad or len(set(spec)) != len(spec):
            raise ConfigError(
                f"{key}: layers {list(spec)} must be distinct and in [0, {num_layers - 1}]"
            )
        return sorted(spec)
    if isinstance(spec, dict) and set(spec) <= {"every", "start"} and "every" in spec:
        every, start = spec["every"], spec.get("start", 0)
        if isinstance(every, int) and isinstance(start, int) and every > 0 and start >= 0:
            return list(range(start, num_layers, every))
    raise ConfigError(
        f"{key}: got {spec!r}; allowed: all, a list of layer indices, or {{every: k, start: j}}"
    )


def validate(cfg: Config) -> None:
    """Raises ConfigError for values that are well-typed but impossible."""
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}: got {_get(cfg, key)!r}; allowed: {', '.join(allowed)}")
    for key in POSITIVE:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"{key}: got {_get(cfg, key)}; must be > 0")
    for key in NON_NEGATIVE:
        if not _get(cfg, key) >= 0:
            raise ConfigError(f"{key}: got {_get(cfg, key)}; must be >= 0")
    m, a = cfg.model, cfg.model.attention
    kv = m.num_kv_heads or m.num_heads
    if m.num_heads % kv:
        raise ConfigError(f"model.num_kv_heads: {kv} must divide model.num_heads ({m.num_heads})")
    if not m.head_dim and m.dim % m.num_heads:
        raise ConfigError(
            f"model.dim: {m.dim} is not divisible by model.num_heads ({m.num_heads}); "
            "set model.head_dim explicitly"
        )
    for name in ("kq_pre", "kq_post"):
        if getattr(a, name).c_k % 2 == 0:
            raise ConfigError(
                f"model.attention.{name}.c_k: got {getattr(a, name).c_k}; must be odd "
                "(the key taps are centred)"
            )
    group = a.head_group_size or m.num_heads
    if m.num_heads % group:
        raise ConfigError(
            f"model.attention.head_group_size: {group} must divide model.num_heads ({m.num_heads})"
        )
    kq_layer_indices(a.kq_layers, m.num_layers)
    if a.kind == "diff" and (
        a.kq_pre.enabled or a.kq_post.enabled or a.head_pre != "none" or a.head_post != "none"
    ):
        raise ConfigError(
            "model.attention.kind: diff does not combine with key-query convolution or head "
            "mixing; set them off or use kind: softmax"
        )
    if a.kind == "diff" and a.group_norm != "none":
        raise ConfigError(
            "model.attention.group_norm: DIFF attention has its own per-head norm; "
            "set group_norm: none with kind: diff"
        )
    if a.kind == "diff" and not m.head_dim and m.dim % (2 * m.num_heads):
        raise ConfigError(
            f"model.dim: {m.dim} is not divisible by 2 x model.num_heads ({m.num_heads}), which "
            "DIFF attention's half-heads need; set model.head_dim explicitly"
        )
    if a.head_pre == "conv3d" and not a.kq_pre.enabled:
        raise ConfigError(
            "model.attention.head_pre: conv3d is the full 3-D pre-softmax kernel and needs "
            "model.attention.kq_pre.enabled: true for its c_q and c_k"
        )
    if cfg.train.min_lr_ratio > 1:
        raise ConfigError(f"train.min_lr_ratio: got {cfg.train.min_lr_ratio}; must be in [0, 1]")
    if cfg.train.warmup_steps > cfg.train.steps:
        raise ConfigError(
            f"train.warmup_steps: {cfg.train.warmup_steps} exceeds train.steps ({cfg.train.steps})"
        )
    b = cfg.data.block
    if b.n > 26 or b.l > b.n:
        raise ConfigError(f"data.block: need 1 <= l <= n <= 26; got n={b.n}, l={b.l}")
    for axis in ("data", "fsdp", "tensor"):
        size = getattr(cfg.mesh, axis)
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{axis}: got {size}; must be a positive size or -1 (fill)")
    if [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor].count(-1) > 1:
        raise ConfigError("mesh: at most one of data, fsdp, tensor may be -1")
    if not math.isfinite(cfg.train.lr):
        raise ConfigError(f"train.lr: got {cfg.train.lr}; must be finite")


def to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts and lists."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, loadable again by load_config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# Keys that may change when a run resumes: they do not change what is computed.
HARMLESS_ON_RESUME = (
    "train.steps",
    "log.",
    "eval.",
    "checkpoint.every",
    "checkpoint.keep",
    "checkpoint.async_save",
    "data.data_dir",
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
    old_flat, new_flat = _flatten(saved), _flatten(new)
    changed = []
    for key in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(key) == new_flat.get(key):
            continue
        if any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS_ON_RESUME):
            continue
        changed.append(f"{key}: {old_flat.get(key)!r} -> {new_flat.get(key)!r}")
    return changed

"""The schema of a run: typed dataclasses, loaded from YAML with dotted command-line overrides.

    cfg = load_config("configs/toy/block_mta.yaml", ["train.steps=200", "model.dim=128"])

Unknown keys, wrong types and impossible values raise ConfigError with one line naming the key
and what is allowed. `to_yaml(cfg)` gives the resolved config that a workdir stores.
"""

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mta.data.tasks import TASKS  # the task registry: light modules, no TFDS


class ConfigError(ValueError):
    """A user error in a config: the message is one line naming the key and what is allowed."""


@dataclass
class KQConvConfig:
    """A key-query convolution: `c_q` query taps (past only) x `c_k` key taps (centred, odd)."""

    enabled: bool = False  # use this convolution (in the layers of kq_layers)
    c_q: int = 6  # query taps: the current query and the c_q - 1 previous ones
    c_k: int = 11  # key taps, centred on the current key; must be odd


@dataclass
class AttentionConfig:
    """Attention variant. With every MTA part off this is standard causal attention."""

    kind: str = "softmax"  # softmax (baseline, talking heads, MTA) | diff (DIFF Transformer)
    # reference (the paper's equations, plain autodiff) | dense (tuned for XLA:CPU) | blockwise
    # (O(T) memory) | auto (dense on CPU, reference elsewhere, blockwise when maps are too big)
    impl: str = "auto"
    kq_pre: KQConvConfig = field(default_factory=KQConvConfig)  # conv before the softmax
    kq_post: KQConvConfig = field(default_factory=KQConvConfig)  # conv after the softmax
    # Layers with key-query convolution: "all", an explicit list of 0-based layers like
    # [2, 6, 10], or {every: 4, start: 2}.
    kq_layers: Any = "all"
    # Head mixing of the logits: none | linear ([H, H]) | grouped ([H/c_h, c_h, c_h]) |
    # conv3d (a full 3-D kernel over heads, queries and keys in place of kq_pre + mixing).
    head_pre: str = "none"
    head_post: str = "none"  # head mixing of the probabilities: none | grouped
    head_group_size: int = 0  # c_h; 0 means all heads in one group
    # Per-head RMSNorm of the attention output, then: none (no norm at all) | gating (a
    # sigmoid gate per token and head) | depth_scaling (times 1 - lambda_init(layer)).
    group_norm: str = "none"
    # Init of the kq kernels: identity (MTA starts equal to the baseline) | constant | zero |
    # uniform. Head mixing always starts at the identity.
    kernel_init: str = "identity"
    kernel_init_value: float = 0.3  # the constant of `constant`, the half-width of `uniform`
    decay_mta_params: bool = True  # apply weight decay to MTA kernels, mixing and norm weights


@dataclass
class ModelConfig:
    vocab_size: int = 259  # the byte tokenizer's 256 bytes + pad, bos, eos
    dim: int = 64  # model (embedding) width
    num_layers: int = 4  # transformer blocks
    num_heads: int = 2  # query heads H
    num_kv_heads: int = 0  # 0 means num_heads (MHA); 1 is MQA; in between is GQA
    head_dim: int = 0  # 0 means dim // num_heads
    mlp_hidden: int = 256  # hidden width of the SwiGLU feed-forward layer
    tie_embeddings: bool = True  # the output layer reuses the input embedding matrix
    rope_theta: float = 10000.0  # base of the rotary position embedding's frequencies
    norm_eps: float = 1e-5  # epsilon of every RMSNorm
    init_std: float = 0.02  # std of the normal init of embeddings and projections
    scale_output_init: bool = False  # divide output projections' init std by sqrt(2 * layers)
    compute_dtype: str = "float32"  # float32 | bfloat16 (parameters stay float32)
    remat: str = "none"  # none | block | attention: recompute these in the backward pass
    # Hand-written derivatives measured faster on XLA:CPU: auto (CPU only) | enabled | disabled.
    # Disabled, the model is plain autodiff (jax.jvp works, except through impl blockwise).
    tuned_vjp: str = "auto"
    attention: AttentionConfig = field(default_factory=AttentionConfig)


def _with_task_settings(base: type) -> type:
    """`base` plus one field per registered task (mta/data/tasks), `<task>: <its settings
    dataclass>` at its defaults; named like `base` without its leading underscore."""
    fields = [(name, t.settings, field(default_factory=t.settings)) for name, t in TASKS.items()]
    cls = dataclasses.make_dataclass(base.__name__.lstrip("_"), fields, bases=(base,))
    cls.__module__, cls.__doc__ = __name__, base.__doc__
    return cls


@dataclass
class _MixtureMember:
    """One task of a mixture (data.task: mix), drawn with probability weight / sum of weights;
    its settings are its task's section, data.mixture[i].<task>."""

    task: str = ""  # one of the tasks of data.task (not mix)
    weight: float = 1.0  # relative: the share of examples is weight / sum of the weights


MixtureMember = _with_task_settings(_MixtureMember)


@dataclass
class _DataConfig:
    """Then one section of settings per task (data.<task>): data.task's is the one used."""

    task: str = "block"  # a task of mta/data/tasks (block | mqar | niah | ...) or mix
    data_dir: str = "~/tensorflow_datasets"  # where TFDS builds and reads datasets
    seq_len: int = 2048  # tokens per training row (the block task sets its own)
    packing: str = "pad"  # pad (one example per row) | pack (first-fit, with segment ids)
    too_long: str = "drop"  # an example longer than seq_len: drop | truncate (text is chunked)
    # The members of task `mix`, e.g. [{task: mqar, weight: 0.4, mqar: {num_pairs: 8}},
    # {task: block, weight: 0.6, block: {num_blocks: 5}}] (see mta/data/mixture.py).
    mixture: list[MixtureMember] = field(default_factory=list)
    prefetch: int = 2  # batches read and put on devices ahead by a thread (one process); 0: none


DataConfig = _with_task_settings(_DataConfig)


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps of the whole run
    batch_size: int = 32  # global, over all devices and hosts
    seed: int = 0  # seed of the parameter init and of the training data order
    lr: float = 1e-3  # peak learning rate (reached after warmup)
    warmup_steps: int = 100  # linear warmup from 0 to lr
    schedule: str = "constant"  # constant | linear | cosine (after warmup)
    min_lr_ratio: float = 0.0  # final lr of linear/cosine as a fraction of lr
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    beta1: float = 0.9  # Adam's first-moment decay
    beta2: float = 0.98  # Adam's second-moment decay
    eps: float = 1e-8  # Adam's epsilon
    clip_norm: float = 1.0  # global-norm clipping; 0 disables it
    skip_nonfinite: bool = False  # skip (and count) updates with NaN/Inf instead of stopping
    grad_accum: int = 1  # micro-batches per step (gradient accumulation)
    # Dispatch step k+1 before reading whether step k was finite (no host wait per step; a NaN
    # stops the run one step later, never checkpointed); false waits for every step, as do
    # multi-process runs for now (their stop agreement needs the step done).
    run_ahead: bool = True


@dataclass
class MeshConfig:
    """Device mesh sizes; -1 fills the remaining devices. Product must equal the device count."""

    data: int = -1  # devices on the data axis: the batch is split over data x fsdp
    fsdp: int = 1  # devices on the fsdp axis: batch split, parameters sharded by `rules`
    tensor: int = 1  # devices on the tensor axis: parameters sharded by `rules`
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
    every: int = 500  # save every this many steps (and always at the last step)
    keep: int = 3  # newest checkpoints kept; older ones are deleted
    async_save: bool = True  # write in the background while training goes on


@dataclass
class LogConfig:
    every: int = 50  # write a metrics record every this many steps
    tensorboard: bool = True  # also write TensorBoard event files to WORKDIR/tensorboard
    progress: str = "auto"  # auto (only in a terminal) | on | off
    # [START, STOP]: a jax.profiler trace of steps START..STOP in WORKDIR/profile ([]: none);
    # `mta train --profile-steps START:STOP` sets it
    profile_steps: list[int] = field(default_factory=list)


@dataclass
class EvalConfig:
    every: int = 500  # 0 evaluates only at the end
    split: str = "validation"  # the dataset split evaluated
    num_examples: int = 1000  # examples evaluated (the first ones of the split)
    batch_size: int = 100  # examples per evaluation batch


@dataclass
class Config:
    # The decoder-only transformer (mta/model.py).
    model: ModelConfig = field(default_factory=ModelConfig)
    # The task, its TFDS dataset and the grain input pipeline (mta/data/).
    data: DataConfig = field(default_factory=DataConfig)
    # Optimisation: AdamW, warmup, learning-rate schedule, clipping (mta/train/).
    train: TrainConfig = field(default_factory=TrainConfig)
    # The device mesh and how parameters are sharded over it (mta/train/mesh.py).
    mesh: MeshConfig = field(default_factory=MeshConfig)
    # Orbax checkpoints in WORKDIR/checkpoints (mta/train/checkpoint.py).
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # WORKDIR/metrics.jsonl, TensorBoard event files and the progress bar.
    log: LogConfig = field(default_factory=LogConfig)
    # The evaluation during training: exact-match error and loss on the answer tokens.
    eval: EvalConfig = field(default_factory=EvalConfig)


CHOICES = {
    "model.attention.kind": ("softmax", "diff"),
    "model.attention.impl": ("reference", "dense", "blockwise", "auto"),
    "model.tuned_vjp": ("auto", "enabled", "disabled"),
    "model.attention.head_pre": ("none", "linear", "grouped", "conv3d"),
    "model.attention.head_post": ("none", "grouped"),
    "model.attention.group_norm": ("none", "gating", "depth_scaling"),
    "model.attention.kernel_init": ("identity", "constant", "zero", "uniform"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "block", "attention"),
    "data.task": (*TASKS, "mix"),
    "data.packing": ("pad", "pack"),
    "data.too_long": ("drop", "truncate"),
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
    "train.seed",
    "train.lr",
    "train.warmup_steps",
    "train.weight_decay",
    "train.clip_norm",
    "train.min_lr_ratio",
    "eval.every",
    "data.prefetch",
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


MIXTURE_EXAMPLE = "{task: mqar, weight: 0.5, mqar: {num_pairs: 8}}"


def _check_settings(settings: Any, key: str) -> None:
    """A task's settings at `key` (data.<task> or data.mixture[i].<task>): ConfigError naming
    the key for impossible values."""
    try:
        settings.check()
    except ValueError as err:
        raise ConfigError(f"{key}: {_one_line(err)}") from None


def _validate_data(data: DataConfig) -> None:
    """Every task's section; data.mixture: members only with task mix, each a known task with
    a weight > 0 and settings only in its own task's section."""
    for name in TASKS:
        _check_settings(getattr(data, name), f"data.{name}")
    if data.task != "mix":
        if data.mixture:
            raise ConfigError(
                f"data.mixture: set, but data.task is {data.task!r}; use data.task: mix to "
                "train on a mixture"
            )
        return
    if not data.mixture:
        raise ConfigError(
            f"data.mixture: empty; data.task: mix needs a list of members like {MIXTURE_EXAMPLE}"
            f" (tasks: {', '.join(TASKS)})"
        )
    for index, member in enumerate(data.mixture):
        key = f"data.mixture[{index}]"
        if member.task not in TASKS:
            raise ConfigError(f"{key}.task: got {member.task!r}; allowed: {', '.join(TASKS)}")
        if not (math.isfinite(member.weight) and member.weight > 0):
            raise ConfigError(f"{key}.weight: got {member.weight}; must be a finite number > 0")
        _check_settings(getattr(member, member.task), f"{key}.{member.task}")
        for name, task in TASKS.items():
            if name != member.task and getattr(member, name) != task.settings():
                raise ConfigError(
                    f"{key}.{name}: set, but this member's task is {member.task}; give its "
                    f"settings in {key}.{member.task}"
                )


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


def _validate_profile_steps(steps: list[int]) -> None:
    if steps and (len(steps) != 2 or not 1 <= steps[0] <= steps[1]):
        raise ConfigError(
            f"log.profile_steps: got {list(steps)}; must be [START, STOP] with "
            "1 <= START <= STOP (e.g. [10, 15]) or []"
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
    _validate_data(cfg.data)
    for axis in ("data", "fsdp", "tensor"):
        size = getattr(cfg.mesh, axis)
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{axis}: got {size}; must be a positive size or -1 (fill)")
    if [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor].count(-1) > 1:
        raise ConfigError("mesh: at most one of data, fsdp, tensor may be -1")
    _validate_profile_steps(cfg.log.profile_steps)
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
    "train.run_ahead",
    "data.prefetch",
    "model.attention.impl",
    "model.tuned_vjp",
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

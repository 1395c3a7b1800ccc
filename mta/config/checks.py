"""Checks of a loaded config: values that are well-typed but impossible (ConfigError)."""

import math
from typing import Any

from mta.config.schema import (
    CHOICES,
    NON_NEGATIVE,
    POSITIVE,
    TASKS,
    Config,
    ConfigError,
    DataConfig,
    TokenizerConfig,
)
from mta.data.tasks.corpus import SOURCE_EXAMPLE, check_source


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _get(cfg: Config, dotted: str) -> Any:
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


MIXTURE_EXAMPLE = "{task: mqar, weight: 0.5, mqar: {num_pairs: 8}}"


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
    _validate_sources(data)
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
        if member.task == "corpus":
            raise ConfigError(
                f"{key}.task: corpus is not a mixture member; weight its sources in data.sources"
            )
        _check_settings(getattr(member, member.task), f"{key}.{member.task}")
        for name, task in TASKS.items():
            if name != member.task and getattr(member, name) != task.settings():
                raise ConfigError(
                    f"{key}.{name}: set, but this member's task is {member.task}; give its "
                    f"settings in {key}.{member.task}"
                )


def _validate_tokenizer(tok: TokenizerConfig) -> None:
    """A path exactly when the kind needs a file (the file itself is read by the train
    command's checks, `mta.data.pipeline.configured_tokenizer`)."""
    if tok.kind == "byte" and tok.path:
        raise ConfigError(
            f"data.tokenizer.path: {tok.path!r} given, but the byte tokenizer takes no file; set "
            "data.tokenizer.kind (sentencepiece | tiktoken | huggingface) or path: ''"
        )
    if tok.kind != "byte" and not tok.path:
        raise ConfigError(
            f"data.tokenizer.path: empty; a {tok.kind} tokenizer needs its file (make one with "
            "`mta tokenizer train`)"
        )


def _validate_sources(data: DataConfig) -> None:
    """data.sources: each source complete and weighted, set only with data.task: corpus, which
    needs at least one."""
    if data.sources and data.task != "corpus":
        raise ConfigError(
            f"data.sources: set, but data.task is {data.task!r}; use data.task: corpus to train "
            "on them"
        )
    if data.task == "corpus" and not data.sources:
        raise ConfigError(
            f"data.sources: empty; data.task: corpus needs a list of sources like {SOURCE_EXAMPLE}"
        )
    for index, source in enumerate(data.sources):
        try:
            check_source(source)
        except ValueError as err:
            raise ConfigError(f"data.sources[{index}].{_one_line(err)}") from None


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
    if a.kind in ("fox", "stick_breaking") and (
        a.kq_pre.enabled
        or a.kq_post.enabled
        or a.head_pre != "none"
        or a.head_post != "none"
        or a.group_norm != "none"
    ):
        raise ConfigError(
            f"model.attention.kind: {a.kind} does not combine with key-query convolution, head "
            "mixing or group_norm; set them off or use kind: softmax"
        )
    if a.attend_current and a.kind != "stick_breaking":
        raise ConfigError(
            "model.attention.attend_current: only stick_breaking attention has it; set it false"
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
    scaling = m.rope_scaling
    if scaling.kind == "llama3" and not 0 < scaling.low_freq_factor < scaling.high_freq_factor:
        raise ConfigError(
            f"model.rope_scaling: low_freq_factor {scaling.low_freq_factor} and high_freq_factor "
            f"{scaling.high_freq_factor} must satisfy 0 < low < high"
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
    _validate_tokenizer(cfg.data.tokenizer)
    if cfg.data.task == "corpus" and cfg.eval.split == "test":
        raise ConfigError("eval.split: got 'test'; a corpus has only train and validation splits")
    for axis in ("data", "fsdp", "tensor"):
        size = getattr(cfg.mesh, axis)
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{axis}: got {size}; must be a positive size or -1 (fill)")
    if [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor].count(-1) > 1:
        raise ConfigError("mesh: at most one of data, fsdp, tensor may be -1")
    _validate_profile_steps(cfg.log.profile_steps)
    if not math.isfinite(cfg.train.lr):
        raise ConfigError(f"train.lr: got {cfg.train.lr}; must be finite")

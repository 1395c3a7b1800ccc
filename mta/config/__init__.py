"""The schema of a run: typed dataclasses, loaded from YAML with dotted command-line overrides.

    cfg = load_config("configs/toy/block_mta.yaml", ["train.steps=200", "model.dim=128"])

Unknown keys, wrong types and impossible values raise ConfigError with one line naming the key
and what is allowed. `to_yaml(cfg)` gives the resolved config that a workdir stores.
"""

from mta.config.checks import kq_layer_indices, validate
from mta.config.load import load_config, upgrade_saved
from mta.config.resume import HARMLESS_ON_RESUME, resume_diff
from mta.config.schema import (
    CHOICES,
    NON_NEGATIVE,
    POSITIVE,
    TASKS,
    AttentionConfig,
    CheckpointConfig,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    KQConvConfig,
    LogConfig,
    MeshConfig,
    MixtureMember,
    ModelConfig,
    SourceConfig,
    TokenizerConfig,
    TrainConfig,
    to_dict,
    to_yaml,
)

__all__ = [
    "AttentionConfig",
    "CHOICES",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "HARMLESS_ON_RESUME",
    "KQConvConfig",
    "LogConfig",
    "MeshConfig",
    "MixtureMember",
    "ModelConfig",
    "NON_NEGATIVE",
    "POSITIVE",
    "SourceConfig",
    "TASKS",
    "TokenizerConfig",
    "TrainConfig",
    "kq_layer_indices",
    "load_config",
    "resume_diff",
    "to_dict",
    "to_yaml",
    "upgrade_saved",
    "validate",
]

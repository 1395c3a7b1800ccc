"""TFDS builder `mta_mqar`: multi-query associative recall in bytes (see `mta.data.mqar`).

    builder = prepare_mqar(mqar_config(num_pairs=16, length=1024), data_dir)
    record = builder.as_data_source()["test"][0]  # tokens, answer_mask, prompt, answer, distances

Note: tokens = [BOS] + prompt (the answers sit inside the prompt, marked by answer_mask).
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mta.data import mqar, tfds_common


@dataclasses.dataclass(eq=False, kw_only=True)
class MqarConfig(tfds_common.GeneratedTaskConfig):
    """Parameters of one build; make instances with `mqar_config`. Names look like
    `p16_k3_v3_len1024`, plus `_a{alpha}` and split/seed suffixes when not the defaults."""

    num_pairs: int = 16
    key_len: int = 3
    value_len: int = 3
    length: int = 1024
    alpha: float = mqar.DEFAULT_ALPHA

    def check(self):
        mqar.check_mqar(self.num_pairs, self.key_len, self.value_len, self.length, self.alpha)

    @classmethod
    def name_parts(cls, p):
        head = f"p{p['num_pairs']}_k{p['key_len']}_v{p['value_len']}_len{p['length']}"
        return head, [("a", p["alpha"], mqar.DEFAULT_ALPHA)]


_PREDEFINED = [
    tfds_common.make_config(MqarConfig, num_pairs=pairs, length=length)
    for pairs, length in ((16, 1024), (64, 4096))
]


def mqar_config(
    num_pairs: int = 16,
    key_len: int = 3,
    value_len: int = 3,
    length: int = 1024,
    alpha: float = mqar.DEFAULT_ALPHA,
    num_train: int = 10_000,
    num_validation: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
) -> MqarConfig:
    """The config for these parameters; ValueError for invalid ones."""
    return tfds_common.make_config(
        MqarConfig,
        _PREDEFINED,
        num_pairs=num_pairs,
        key_len=key_len,
        value_len=value_len,
        length=length,
        alpha=alpha,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
        seed=seed,
    )


class MtaMqar(tfds_common.TaskBuilder):
    """Multi-query associative recall (Zoology) spelled in bytes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _PREDEFINED
    DESCRIPTION = (
        "Key-value pairs (letters, digits), then a region of noise where every key is queried "
        "once at a power-law distance and followed by its value; loss on the values only."
    )

    def features(self):
        return tfds_common.qa_features(
            distances=tfds.features.Tensor(shape=(None,), dtype=np.int32)
        )

    def draw(self, rng: np.random.Generator) -> dict:
        c = self.builder_config
        return mqar.generate_example(
            rng, c.num_pairs, c.key_len, c.value_len, c.length, c.alpha, c.tok
        )


def prepare_mqar(config: MqarConfig, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds the dataset in data_dir (array_record, offline) unless present; returns the builder.

    Records: `tokens`, `answer_mask` (int32 [len(prompt) + 1]), `prompt`, `answer` (bytes),
    `distances` (int32 [num_pairs]).
    """
    return tfds_common.prepare(MtaMqar, config, data_dir)

"""TFDS builder `mta_babi`: BabiLong-style bAbI QA1-QA5 (see `mta.data.babi`).

builder = prepare_babi(babi_config(task=2, length=4096), data_dir)
record = builder.as_data_source()["test"][0]  # tokens, answer_mask, prompt, answer, facts, ...
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mta.data import babi, block_task, tfds_common

LENGTHS = (0, 1024, 2048, 4096, 8192, 16384)


@dataclasses.dataclass(eq=False, kw_only=True)
class BabiConfig(tfds_common.GeneratedTaskConfig):
    """Parameters of one build; make instances with `babi_config`. Names look like `qa2_len4096`,
    plus split/seed suffixes when not the defaults."""

    task: int = 1
    length: int = 0

    def check(self):
        babi.check_babi(self.task, self.length)

    @classmethod
    def name_parts(cls, p):
        return f"qa{p['task']}_len{p['length']}", []


_PREDEFINED = [
    tfds_common.make_config(BabiConfig, task=task, length=length)
    for task in babi.TASKS
    for length in LENGTHS
]


def babi_config(
    task: int = 1,
    length: int = 0,
    num_train: int = 10_000,
    num_validation: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
) -> BabiConfig:
    """The config for these parameters (length in bytes, 0 = facts only); ValueError if invalid."""
    return tfds_common.make_config(
        BabiConfig,
        _PREDEFINED,
        task=task,
        length=length,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
        seed=seed,
    )


class MtaBabi(tfds_common.TaskBuilder):
    """bAbI QA1-QA5 from a world simulator, facts spread in filler text (BabiLong style)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _PREDEFINED
    DESCRIPTION = (
        "Stories of people moving, taking, dropping and giving objects (or rooms placed on a "
        "grid), hidden in filler text; one question, a one-word answer."
    )

    def features(self):
        return tfds_common.qa_features(
            question=tfds.features.Text(),
            facts=tfds.features.Sequence(tfds.features.Text()),
        )

    def draw(self, rng: np.random.Generator) -> dict:
        c = self.builder_config
        example = babi.generate_example(rng, c.task, c.length)
        return {**example, **block_task.encode_example(example["prompt"], example["answer"], c.tok)}


def prepare_babi(config: BabiConfig, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds the dataset in data_dir (array_record, offline) unless present; returns the builder.

    Records: `tokens`, `answer_mask` (int32 [T + 1]; T == length unless length is 0), `prompt`,
    `answer`, `question` (bytes) and `facts` (bytes [number of facts], in story order).
    """
    return tfds_common.prepare(MtaBabi, config, data_dir)

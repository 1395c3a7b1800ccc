# ruff: noqa: E741 (`l` is the name the paper gives the number of query letters)
"""TFDS builder `mta_block_task` for the "find the block" toy task.

Built offline in array_record format and read without TensorFlow:

    builder = prepare_block_task(block_task_config(5, 2, "all", num_blocks=5), data_dir)
    source = builder.as_data_source()["train"]  # source[i]: dict of numpy arrays, text as bytes
"""

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from mta.data import block_task, tfds_common
from mta.data.tfds_common import SPLITS  # noqa: F401 (part of this module's API)

DEFAULT_NUM_TRAIN = 100_000
DEFAULT_NUM_VALIDATION = 1000
DEFAULT_NUM_TEST = 1000


@dataclasses.dataclass(eq=False, kw_only=True)
class BlockTaskConfig(tfds_common.GeneratedTaskConfig):
    """Parameters of one build of the task; make instances with `block_task_config`.

    `num_blocks=None` fills `length` (see `block_task.blocks_for_length`). The name must be the one
    `block_task_config` derives from the parameters, so different settings never share a build.
    """

    n: int = 5
    l: int = 2
    variant: str = "all"
    length: int = block_task.DEFAULT_LENGTH
    num_blocks: int | None = None
    num_train: int = DEFAULT_NUM_TRAIN
    num_validation: int = DEFAULT_NUM_VALIDATION
    num_test: int = DEFAULT_NUM_TEST

    def check(self):
        block_task.check_block_task(self.n, self.l, self.variant, self.length, self.num_blocks)

    @classmethod
    def name_parts(cls, p):
        return f"n{p['n']}_l{p['l']}_{p['variant']}", [
            ("b", p["num_blocks"], None),
            ("len", p["length"], block_task.DEFAULT_LENGTH),
        ]

    @property
    def blocks(self) -> int:
        """The number of blocks per example (resolves num_blocks=None)."""
        if self.num_blocks is not None:
            return self.num_blocks
        return block_task.blocks_for_length(self.n, self.l, self.variant, self.length)


_PREDEFINED = [
    tfds_common.make_config(BlockTaskConfig, n=n, l=2, variant=variant)
    for n in (5, 8)
    for variant in block_task.VARIANTS
]


def block_task_config(
    n: int,
    l: int,
    variant: str,
    length: int = block_task.DEFAULT_LENGTH,
    num_blocks: int | None = None,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_validation: int = DEFAULT_NUM_VALIDATION,
    num_test: int = DEFAULT_NUM_TEST,
    seed: int = 0,
) -> BlockTaskConfig:
    """Returns the config for these parameters, named after all of them (e.g. `n5_l2_all_b5`).

    Raises ValueError for invalid parameters.
    """
    return tfds_common.make_config(
        BlockTaskConfig,
        _PREDEFINED,
        n=n,
        l=l,
        variant=variant,
        length=length,
        num_blocks=num_blocks,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
        seed=seed,
    )


def _draw(config: BlockTaskConfig, rng: np.random.Generator) -> dict:
    prompt, answer = block_task.generate_example(
        rng, config.n, config.l, config.variant, config.blocks
    )
    tokens = block_task.encode_example(prompt, answer, config.tok)
    return {**tokens, "prompt": prompt, "answer": answer}


def _unique_examples(config: BlockTaskConfig, split: str, exclude: set[bytes]) -> Iterator[dict]:
    """Yields the split's examples: unique prompts, none whose key is in exclude."""
    return tfds_common.unique_examples(
        lambda rng: _draw(config, rng),
        tfds_common.split_rng(config.seed, split),
        config.num_examples(split),
        exclude,
        split,
        config.name,
    )


class MtaBlockTask(tfds_common.TaskBuilder):
    """The "find the block" task of the Multi-Token Attention paper."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _PREDEFINED
    DESCRIPTION = (
        "Blocks of distinct letters joined by '.', then '#' and query letters from the one block "
        "containing them all; the answer is that block or its first/last letter."
    )

    def draw(self, rng: np.random.Generator) -> dict:
        return _draw(self.builder_config, rng)


def prepare_block_task(config: BlockTaskConfig, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds the dataset in data_dir (array_record, offline) unless present; returns the builder.

    Read a split with `builder.as_data_source()[split]`; each record is a dict with `tokens` and
    `answer_mask` (int32 [T]) and `prompt`, `answer` (bytes).
    """
    return tfds_common.prepare(MtaBlockTask, config, data_dir)

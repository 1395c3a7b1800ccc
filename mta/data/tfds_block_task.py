# ruff: noqa: E741 (`l` is the name the paper gives the number of query letters)
"""TFDS builder `mta_block_task` for the "find the block" toy task.

Built offline in array_record format and read without TensorFlow:

    builder = prepare_block_task(block_task_config(5, 2, "all", num_blocks=5), data_dir)
    source = builder.as_data_source()["train"]  # source[i]: dict of numpy arrays, text as bytes
"""

import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.utils import tqdm_utils

from mta.data import block_task

SPLITS = ("train", "validation", "test")
DEFAULT_NUM_TRAIN = 100_000
DEFAULT_NUM_VALIDATION = 1000
DEFAULT_NUM_TEST = 1000


def _config_name(
    n: int,
    l: int,
    variant: str,
    length: int,
    num_blocks: int | None,
    num_train: int,
    num_validation: int,
    num_test: int,
    seed: int,
) -> str:
    """Deterministic name encoding every parameter (suffixes only for non-defaults)."""
    name = f"n{n}_l{l}_{variant}"
    if num_blocks is not None:
        name += f"_b{num_blocks}"
    if length != block_task.DEFAULT_LENGTH:
        name += f"_len{length}"
    if num_train != DEFAULT_NUM_TRAIN:
        name += f"_train{num_train}"
    if num_validation != DEFAULT_NUM_VALIDATION:
        name += f"_val{num_validation}"
    if num_test != DEFAULT_NUM_TEST:
        name += f"_test{num_test}"
    if seed != 0:
        name += f"_seed{seed}"
    return name


# TFDS's BuilderConfig is a non-frozen dataclass, and a frozen dataclass cannot inherit from one,
# so immutability is enforced by __setattr__ instead.
@dataclasses.dataclass(eq=False, kw_only=True)
class BlockTaskConfig(tfds.core.BuilderConfig):
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
    seed: int = 0

    def __post_init__(self):
        max_blocks = block_task.blocks_for_length(self.n, self.l, self.variant, self.length)
        if self.num_blocks is not None:
            block_task.check_num_blocks(self.n, self.l, self.num_blocks)
            if self.num_blocks > max_blocks:
                raise ValueError(
                    f"num_blocks={self.num_blocks} does not fit in length={self.length}: at most "
                    f"{max_blocks} blocks fit for n={self.n}, l={self.l}, "
                    f"variant={self.variant!r}"
                )
        block_task.check_int("num_train", self.num_train, 1)
        block_task.check_int("num_validation", self.num_validation, 1)
        block_task.check_int("num_test", self.num_test, 1)
        block_task.check_int("seed", self.seed, 0)
        expected = _config_name(
            self.n,
            self.l,
            self.variant,
            self.length,
            self.num_blocks,
            self.num_train,
            self.num_validation,
            self.num_test,
            self.seed,
        )
        if self.name != expected:
            raise ValueError(
                f"name must be {expected!r} for these parameters, got {self.name!r}; "
                "use block_task_config() to make configs"
            )
        if self.description is None:
            object.__setattr__(self, "description", f"find the block, {expected}")

    def __setattr__(self, key, value):
        if key in self.__dict__:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {key!r}")
        super().__setattr__(key, value)

    @property
    def blocks(self) -> int:
        """The number of blocks per example (resolves num_blocks=None)."""
        if self.num_blocks is not None:
            return self.num_blocks
        return block_task.blocks_for_length(self.n, self.l, self.variant, self.length)


def _make_config(**kwargs) -> BlockTaskConfig:
    params = {
        "length": block_task.DEFAULT_LENGTH,
        "num_blocks": None,
        "num_train": DEFAULT_NUM_TRAIN,
        "num_validation": DEFAULT_NUM_VALIDATION,
        "num_test": DEFAULT_NUM_TEST,
        "seed": 0,
        **kwargs,
    }
    return BlockTaskConfig(name=_config_name(**params), **params)


_PREDEFINED = [
    _make_config(n=n, l=2, variant=variant) for n in (5, 8) for variant in block_task.VARIANTS
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
    config = _make_config(
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
    # TFDS refuses a custom config named like a predefined one unless it is the same object.
    for predefined in _PREDEFINED:
        if predefined.name == config.name:
            return predefined
    return config


def _prompt_key(prompt: str) -> bytes:
    # A fixed-size digest keeps the seen-set small for 1M-example builds and, unlike hash(), is the
    # same in every process, so builds are reproducible.
    return hashlib.blake2b(prompt.encode("ascii"), digest_size=8).digest()


def _unique_examples(
    config: BlockTaskConfig, split: str, exclude: set[bytes]
) -> Iterator[tuple[str, str]]:
    """Yields the split's (prompt, answer) pairs: unique, and no prompt whose key is in exclude."""
    count = {
        "train": config.num_train,
        "validation": config.num_validation,
        "test": config.num_test,
    }[split]
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, SPLITS.index(split)]))
    seen = set(exclude)
    num_blocks = config.blocks
    max_draws = 10 * count + 10_000
    produced = 0
    for _ in range(max_draws):
        prompt, answer = block_task.generate_example(
            rng, config.n, config.l, config.variant, num_blocks
        )
        key = _prompt_key(prompt)
        if key in seen:
            continue
        seen.add(key)
        yield prompt, answer
        produced += 1
        if produced == count:
            return
    raise ValueError(
        f"only {produced} of {count} unique {split} examples found in {max_draws} draws for "
        f"config {config.name}: ask for fewer examples or a larger task"
    )


class MtaBlockTask(tfds.core.GeneratorBasedBuilder):
    """The "find the block" task of the Multi-Token Attention paper (byte tokens)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _PREDEFINED

    # TFDS's default finds this file through `importlib_resources`, which it imports lazily and
    # which is not installed here; only used to look for a (nonexistent) checksums file.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Blocks of distinct letters joined by '.', then '#' and query letters from the "
                "one block containing them all; the answer is that block or its first/last letter."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "answer_mask": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "prompt": tfds.features.Text(),
                    "answer": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        # Held-out splits are drawn first (they are small) so that train can reject their prompts.
        test = list(_unique_examples(config, "test", set()))
        exclude = {_prompt_key(prompt) for prompt, _ in test}
        validation = list(_unique_examples(config, "validation", exclude))
        exclude |= {_prompt_key(prompt) for prompt, _ in validation}
        return {
            "train": self._generate_examples(_unique_examples(config, "train", exclude)),
            "validation": self._generate_examples(validation),
            "test": self._generate_examples(test),
        }

    def _generate_examples(self, examples: Iterable[tuple[str, str]]):
        for index, (prompt, answer) in enumerate(examples):
            yield (
                index,
                {
                    **block_task.encode_example(prompt, answer),
                    "prompt": prompt,
                    "answer": answer,
                },
            )


def _not_expected_warning(record: logging.LogRecord) -> bool:
    # TFDS warns about every config not in BUILDER_CONFIGS and about the empty folder of a first
    # build; both are normal here.
    message = record.getMessage()
    return not (
        message.startswith("Using custom data configuration")
        or message.endswith("has no dataset_info.json")
    )


@contextlib.contextmanager
def _quiet_tfds():
    """Hides TFDS's progress bars and expected warnings inside the block."""
    logger = logging.getLogger("absl")
    enabled = getattr(tqdm_utils, "_active", True)
    logger.addFilter(_not_expected_warning)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(enabled)
        logger.removeFilter(_not_expected_warning)


def prepare_block_task(config: BlockTaskConfig, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds the dataset in data_dir (array_record, offline) unless present; returns the builder.

    Read a split with `builder.as_data_source()[split]`; each record is a dict with `tokens` and
    `answer_mask` (int32 [T]) and `prompt`, `answer` (bytes).
    """
    with _quiet_tfds():
        builder = MtaBlockTask(config=config, data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            builder.download_and_prepare(file_format="array_record")
    return builder

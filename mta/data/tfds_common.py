"""What every `mta` TFDS builder shares: named configs, split seeds, an offline, quiet build.

A task is a config class (parameters as dataclass fields, validated, named after all of them) and
a builder that only says how to draw one example:

    @dataclasses.dataclass(eq=False, kw_only=True)
    class MyConfig(GeneratedTaskConfig):
        size: int = 3
        def check(self): check_int("size", self.size, 1)
        @classmethod
        def name_parts(cls, p): return f"s{p['size']}", []

    class MtaMyTask(TaskBuilder):
        VERSION = tfds.core.Version("1.0.0")
        def draw(self, rng): ...  # -> {"tokens", "answer_mask", "prompt", "answer", ...}

Splits are drawn from their own seed streams (`split_rng`): test first, then validation, then
train, each rejecting prompts already drawn, so splits are disjoint and free of repeats.

Integrity (`integrity.py`): a build records its shards' sizes and hashes inside TFDS's temporary
build directory, which TFDS renames into place only when the whole build is done; opening an
existing build checks them.
"""

import abc
import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.utils import tqdm_utils

from mta.data import integrity, tokenizers
from mta.data.build_lock import build_lock
from mta.data.checks import check_int

SPLITS = ("train", "validation", "test")

# One name option: (tag, value, default); it appears as f"_{tag}{value}" when value != default.
NameOption = tuple[str, Any, Any]


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The random generator of one split: SeedSequence([seed, index of split in SPLITS])."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split)]))


def format_value(value: Any) -> str:
    """A config-name spelling of a parameter: 0.01 -> "0.01", (0, 50) -> "0-50", None -> "none"."""
    if isinstance(value, tuple | list):
        return "-".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)  # the shortest spelling that reads back as the same float
    return "none" if value is None else str(value)


def config_name(head: str, options: Iterable[NameOption]) -> str:
    """`head` followed by `_{tag}{value}` for every option whose value is not its default."""
    return head + "".join(f"_{tag}{format_value(v)}" for tag, v, d in options if v != d)


# TFDS's BuilderConfig is a non-frozen dataclass, and a frozen dataclass cannot inherit from one,
# so immutability is enforced by __setattr__ instead.
@dataclasses.dataclass(eq=False, kw_only=True)
class TaskConfig(tfds.core.BuilderConfig):
    """Base of the configs: a seed, validation, and a name derived from every parameter.

    Subclasses add fields, `check()` (ValueError for bad values) and `name_parts()`. Make
    instances with `make_config` (which computes the name); a hand-written name that is not the
    derived one is rejected, so different settings never share a build.
    """

    seed: int = 0
    tokenizer: str = "byte"  # tokenizers.spec of the tokenizer: "byte" or "KIND:PATH"

    def check(self) -> None:
        """Raises ValueError for invalid task parameters (split sizes and seed are checked too)."""

    @classmethod
    def name_parts(cls, params: dict[str, Any]) -> tuple[str, list[NameOption]]:
        """(head, options) of the config name for these parameters; see `config_name`."""
        raise NotImplementedError

    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        """The fields that define the data (every field but TFDS's own)."""
        base = {field.name for field in dataclasses.fields(tfds.core.BuilderConfig)}
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in base)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """{parameter: default value}."""
        names = cls.parameter_names()
        return {f.name: f.default for f in dataclasses.fields(cls) if f.name in names}

    @classmethod
    def derive_name(cls, params: dict[str, Any]) -> str:
        """The config name for `params` (missing ones take their defaults): `name_parts`, then
        `_train{n}`, `_val{n}`, `_test{n}` (split sizes, if the config has them),
        `_seed{n}`, each only when not the default, and `_tok{fingerprint}` for a tokenizer
        other than bytes (TokenizerError if its file cannot be read)."""
        defaults = cls.defaults()
        params = {**defaults, **params}
        head, options = cls.name_parts(params)
        tags = {"num_train": "train", "num_validation": "val", "num_test": "test", "seed": "seed"}
        options += [(tag, params[key], defaults[key]) for key, tag in tags.items() if key in params]
        if params["tokenizer"] != "byte":
            options.append(("tok", tokenizers.from_spec(params["tokenizer"]).fingerprint, None))
        return config_name(head, options)

    @property
    def tok(self) -> tokenizers.Tokenizer:
        """The tokenizer of the records."""
        return tokenizers.from_spec(self.tokenizer)

    def parameters(self) -> dict[str, Any]:
        """{parameter: value} of this config."""
        return {name: getattr(self, name) for name in self.parameter_names()}

    def __post_init__(self):
        self.check()
        check_int("seed", self.seed, 0)
        expected = self.derive_name(self.parameters())
        if self.name != expected:
            raise ValueError(
                f"name must be {expected!r} for these parameters, got {self.name!r}; "
                f"use the task's *_config() function to make configs"
            )
        if self.description is None:
            object.__setattr__(self, "description", expected)

    def __setattr__(self, key, value):
        if key in self.__dict__:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {key!r}")
        super().__setattr__(key, value)


@dataclasses.dataclass(eq=False, kw_only=True)
class GeneratedTaskConfig(TaskConfig):
    """A config of generated examples: TaskConfig plus the number of examples of each split."""

    num_train: int = 10_000
    num_validation: int = 1000
    num_test: int = 1000

    def __post_init__(self):
        check_int("num_train", self.num_train, 1)
        check_int("num_validation", self.num_validation, 1)
        check_int("num_test", self.num_test, 1)
        super().__post_init__()

    def num_examples(self, split: str) -> int:
        """The number of examples of `split`."""
        counts = {"train": self.num_train, "validation": self.num_validation}
        return counts[split] if split != "test" else self.num_test


def make_config(
    cls: type[TaskConfig], predefined: Sequence[TaskConfig] = (), **params
) -> TaskConfig:
    """An instance of `cls` for `params`, named by `cls.derive_name`; ValueError if invalid.

    Returns the predefined config of the same name if there is one: TFDS refuses a custom config
    named like a predefined one unless it is the same object.
    """
    unknown = set(params) - set(cls.parameter_names())
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}; allowed: {cls.parameter_names()}")
    config = cls(name=cls.derive_name(params), **params)
    for other in predefined:
        if other.name == config.name:
            return other
    return config


def with_tokenizer(config: TaskConfig, spec: str) -> TaskConfig:
    """`config` with the tokenizer of `spec` (see `tokenizers.spec`), named after it."""
    return make_config(type(config), **{**config.parameters(), "tokenizer": spec})


def prompt_key(prompt: str | bytes) -> bytes:
    """A fixed-size digest of a prompt: small in the seen-sets, the same in every process."""
    data = prompt.encode("utf-8") if isinstance(prompt, str) else prompt
    return hashlib.blake2b(data, digest_size=8).digest()


def unique_examples(
    draw: Callable[[np.random.Generator], dict],
    rng: np.random.Generator,
    count: int,
    exclude: set[bytes],
    split: str,
    name: str,
) -> Iterator[dict]:
    """Yields `count` examples `draw(rng)` whose `prompt` is new and not in `exclude`.

    Raises ValueError naming the split and config `name` after 10 * count + 10_000 draws without
    enough of them.
    """
    seen = set(exclude)
    max_draws = 10 * count + 10_000
    produced = 0
    for _ in range(max_draws):
        example = draw(rng)
        key = prompt_key(example["prompt"])
        if key in seen:
            continue
        seen.add(key)
        yield example
        produced += 1
        if produced == count:
            return
    raise ValueError(
        f"only {produced} of {count} unique {split} examples found in {max_draws} draws for "
        f"config {name}: ask for fewer examples or a larger task"
    )


def qa_features(**extra: tfds.features.FeatureConnector) -> tfds.features.FeaturesDict:
    """`tokens`, `answer_mask` (int32 [T+1]), `prompt`, `answer` (text), plus `extra`."""
    return tfds.features.FeaturesDict(
        {
            "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "answer_mask": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "prompt": tfds.features.Text(),
            "answer": tfds.features.Text(),
            **extra,
        }
    )


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the builders: set VERSION, DESCRIPTION, and override `features()` to add fields
    to `qa_features()`; subclasses define `_split_generators` yielding (key, record) pairs."""

    DESCRIPTION = ""

    # TFDS's default finds the module through `importlib_resources`, which it imports lazily and
    # which is not installed here; only used to look for a (nonexistent) checksums file.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(sys.modules[cls.__module__].__file__)

    def features(self) -> tfds.features.FeaturesDict:
        """The record's features."""
        return qa_features()

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION, features=self.features()
        )

    def _generate_examples(self, examples: Iterable[tuple[Any, dict]]):
        yield from examples

    def _download_and_prepare(self, *args, **kwargs):
        # Runs in TFDS's temporary build directory (self.data_dir), before it is renamed.
        super()._download_and_prepare(*args, **kwargs)
        integrity.record_checksums(self.data_dir)


class TaskBuilder(Builder, skip_registration=True):
    """A builder of generated examples (a GeneratedTaskConfig): subclasses define `draw`."""

    @abc.abstractmethod
    def draw(self, rng: np.random.Generator) -> dict:
        """One example of `self.builder_config` drawn with `rng`: a dict of the features."""

    def _split_generators(self, dl_manager):
        config = self.builder_config

        def examples(split: str, exclude: set[bytes]) -> Iterator[dict]:
            rng = split_rng(config.seed, split)
            count = config.num_examples(split)
            return unique_examples(self.draw, rng, count, exclude, split, config.name)

        # Held-out splits are drawn first (they are small) so that train can reject their prompts.
        test = list(examples("test", set()))
        exclude = {prompt_key(example["prompt"]) for example in test}
        validation = list(examples("validation", exclude))
        exclude |= {prompt_key(example["prompt"]) for example in validation}
        return {
            "train": self._generate_examples(enumerate(examples("train", exclude))),
            "validation": self._generate_examples(enumerate(validation)),
            "test": self._generate_examples(enumerate(test)),
        }


def _not_expected_warning(record: logging.LogRecord) -> bool:
    # TFDS warns about every config not in BUILDER_CONFIGS and about the empty folder of a first
    # build; both are normal here.
    message = record.getMessage()
    return not (
        message.startswith("Using custom data configuration")
        or message.endswith("has no dataset_info.json")
    )


@contextlib.contextmanager
def quiet_tfds():
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


def prepare(
    builder_cls: type[tfds.core.DatasetBuilder], config: tfds.core.BuilderConfig, data_dir: str
) -> tfds.core.DatasetBuilder:
    """Builds `config` in data_dir (array_record, offline) unless present; returns the builder.

    Read a split with `builder.as_data_source()[split]` (records are dicts of numpy arrays, text
    as bytes). DamagedDatasetError if a shard of an existing build was damaged.
    """
    with quiet_tfds():
        builder = builder_cls(config=config, data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            with build_lock(builder.data_dir):  # another run may be building it: wait, then reuse
                builder = builder_cls(config=config, data_dir=data_dir, file_format="array_record")
                if not builder.is_prepared():
                    builder.download_and_prepare(file_format="array_record")
                    return builder
        integrity.verify_checksums(builder.data_dir)
    return builder


def token_lengths(builder: tfds.core.DatasetBuilder, split: str) -> np.ndarray:
    """int64 [records of split]: len(tokens) of every record of a split.

    Counted once from the serialized records (about 20 us each, without decoding the other
    features) and cached beside the build in `token_lengths-{split}.npy`; a data_dir that cannot
    be written is counted again each time.
    """
    path = epath.Path(builder.data_dir) / f"token_lengths-{split}.npy"
    source = builder.as_data_source()[split]
    if path.exists():
        lengths = np.load(io.BytesIO(path.read_bytes()))
        if len(lengths) == len(source):
            return lengths
    lengths = _count_tokens(source)
    buffer = io.BytesIO()
    np.save(buffer, lengths)
    partial = path.parent / f"{path.name}.{os.getpid()}.tmp"
    try:
        partial.write_bytes(buffer.getvalue())
        partial.rename(path)  # atomic: processes counting at once each write a whole file
    except OSError:
        pass
    return lengths


def _count_tokens(source) -> np.ndarray:
    """int64 [len(source)]: len(record["tokens"]) of every record of a TFDS data source."""
    lengths = np.zeros(len(source), np.int64)
    for start in range(0, len(source), 1024):
        keys = list(range(start, min(start + 1024, len(source))))
        counts = _serialized_token_counts(source, keys)
        if counts is None:  # not array_record tf.Examples: decode whole records instead
            counts = [len(record["tokens"]) for record in source.__getitems__(keys)]
        lengths[start : start + len(keys)] = counts
    return lengths


def _serialized_token_counts(source, keys: list[int]) -> list[int] | None:
    """len(tokens) of records `keys`, read from the serialized tf.Examples; None if the source
    does not hold them."""
    from google.protobuf.message import DecodeError
    from tensorflow_datasets.proto import tf_example_pb2

    raw = getattr(source, "data_source", None)  # the array_record reader under TFDS's decoding
    if not hasattr(raw, "__getitems__"):
        return None
    counts = []
    try:
        for record in raw.__getitems__(keys):
            features = tf_example_pb2.Example.FromString(record).features.feature
            if "tokens" not in features:
                return None
            counts.append(len(features["tokens"].int64_list.value))
    except (DecodeError, TypeError):
        return None
    return counts

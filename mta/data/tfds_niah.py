"""TFDS builder `mta_niah`: multi-needle needle-in-a-haystack (see `mta.data.niah`).

builder = prepare_niah(niah_config(num_needles=4, num_asked=2, length=4096), data_dir)
record = builder.as_data_source()["test"][0]  # tokens, answer_mask, prompt, answer, depth, ...
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mta.data import block_task, niah, tfds_common


@dataclasses.dataclass(eq=False, kw_only=True)
class NiahConfig(tfds_common.GeneratedTaskConfig):
    """Parameters of one build; make instances with `niah_config`. Names look like
    `n4_r2_len4096_noise`, plus `_x{num_distractors}`, `_d{depths}` and split/seed suffixes."""

    num_needles: int = 2
    num_asked: int = 1
    length: int = 2048
    depths: tuple[int, ...] = niah.DEFAULT_DEPTHS
    haystack: str = "noise"
    num_distractors: int = 0

    def check(self):
        niah.check_niah(
            self.num_needles,
            self.num_asked,
            self.length,
            self.depths,
            self.haystack,
            self.num_distractors,
        )

    @classmethod
    def name_parts(cls, p):
        head = f"n{p['num_needles']}_r{p['num_asked']}_len{p['length']}_{p['haystack']}"
        return head, [("x", p["num_distractors"], 0), ("d", p["depths"], niah.DEFAULT_DEPTHS)]


_PREDEFINED = [
    tfds_common.make_config(NiahConfig, num_needles=n, num_asked=n, length=length, haystack="text")
    for n in (2, 4, 6)
    for length in (2048, 4096)
]


def niah_config(
    num_needles: int = 2,
    num_asked: int = 1,
    length: int = 2048,
    depths: tuple[int, ...] | list[int] | int = niah.DEFAULT_DEPTHS,
    haystack: str = "noise",
    num_distractors: int = 0,
    num_train: int = 10_000,
    num_validation: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
) -> NiahConfig:
    """The config for these parameters (an int depth means that depth only).

    Raises ValueError for invalid parameters.
    """
    if isinstance(depths, list):
        depths = tuple(depths)
    elif isinstance(depths, int | np.integer) and not isinstance(depths, bool):
        depths = (int(depths),)
    return tfds_common.make_config(
        NiahConfig,
        _PREDEFINED,
        num_needles=num_needles,
        num_asked=num_asked,
        length=length,
        depths=depths,
        haystack=haystack,
        num_distractors=num_distractors,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
        seed=seed,
    )


class MtaNiah(tfds_common.TaskBuilder):
    """Multi-needle needle-in-a-haystack with per-example depth and needles (byte tokens)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _PREDEFINED
    DESCRIPTION = (
        "Needles 'The special magic number for {key} is: {7 digits}.' at a depth of a haystack "
        "(noise, noise with distractor needles, or Python's documentation); the prompt asks for "
        "some of the values, the answer lists them."
    )

    def features(self):
        return tfds_common.qa_features(
            depth=tfds.features.Scalar(dtype=np.int32),
            needle_keys=tfds.features.Sequence(tfds.features.Text()),
            needle_values=tfds.features.Sequence(tfds.features.Text()),
            needle_depths=tfds.features.Tensor(shape=(None,), dtype=np.float32),
            asked=tfds.features.Tensor(shape=(None,), dtype=np.int32),
        )

    def draw(self, rng: np.random.Generator) -> dict:
        c = self.builder_config
        example = niah.generate_example(
            rng, c.num_needles, c.num_asked, c.length, c.depths, c.haystack, c.num_distractors
        )
        return {**example, **block_task.encode_example(example["prompt"], example["answer"], c.tok)}


def prepare_niah(config: NiahConfig, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds the dataset in data_dir (array_record, offline) unless present; returns the builder.

    Records: `tokens`, `answer_mask` (int32 [length + 1]), `prompt`, `answer` (bytes), `depth`
    (int32), `needle_keys`, `needle_values` (bytes [num_needles]), `needle_depths` (float32
    [num_needles]), `asked` (int32 [num_asked]).
    """
    return tfds_common.prepare(MtaNiah, config, data_dir)

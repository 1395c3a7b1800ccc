"""TFDS builder `mta_vartrack`: RULER's variable tracking (see `mta.data.vartrack`).

builder = prepare_vartrack(vartrack_config(num_chains=1, num_hops=4, length=4096), data_dir)
record = builder.as_data_source()["test"][0]  # tokens, answer_mask, prompt, answer
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mta.data import block_task, tfds_common, vartrack


@dataclasses.dataclass(eq=False, kw_only=True)
class VartrackConfig(tfds_common.GeneratedTaskConfig):
    """Parameters of one build; make instances with `vartrack_config`. Names look like
    `c1_h4_len4096_noise`, plus split/seed suffixes when not the defaults."""

    num_chains: int = 1
    num_hops: int = 4
    length: int = 4096
    haystack: str = "noise"

    def check(self):
        vartrack.check_vartrack(self.num_chains, self.num_hops, self.length, self.haystack)

    @classmethod
    def name_parts(cls, p):
        head = f"c{p['num_chains']}_h{p['num_hops']}_len{p['length']}_{p['haystack']}"
        return head, []


_PREDEFINED = [
    tfds_common.make_config(VartrackConfig, length=length) for length in (1024, 2048, 4096)
]


def vartrack_config(
    num_chains: int = 1,
    num_hops: int = 4,
    length: int = 4096,
    haystack: str = "noise",
    num_train: int = 10_000,
    num_validation: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
) -> VartrackConfig:
    """The config for these parameters; ValueError for invalid ones."""
    return tfds_common.make_config(
        VartrackConfig,
        _PREDEFINED,
        num_chains=num_chains,
        num_hops=num_hops,
        length=length,
        haystack=haystack,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
        seed=seed,
    )


class MtaVartrack(tfds_common.TaskBuilder):
    """Variable tracking: chains of `VAR X = VAR Y` in a haystack; name the variables of a value."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _PREDEFINED
    DESCRIPTION = (
        "Chains of variable assignments hidden in noise or text; the answer names, in order, "
        "every variable assigned the asked value."
    )

    def draw(self, rng: np.random.Generator) -> dict:
        c = self.builder_config
        prompt, answer = vartrack.generate_example(
            rng, c.num_chains, c.num_hops, c.length, c.haystack
        )
        tokens = block_task.encode_example(prompt, answer, c.tok)
        return {**tokens, "prompt": prompt, "answer": answer}


def prepare_vartrack(config: VartrackConfig, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds the dataset in data_dir (array_record, offline) unless present; returns the builder.

    Records: `tokens`, `answer_mask` (int32 [length + 1]), `prompt`, `answer` (bytes).
    """
    return tfds_common.prepare(MtaVartrack, config, data_dir)

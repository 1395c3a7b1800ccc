"""The two ways the suite queries a model, batched with fixed shapes so that jit compiles once
per length bucket, not once per batch:

    runner = Runner(graphdef, params, mesh, batch_size=8)
    scored = runner.score([{"tokens": ..., "answer_mask": ...}, ...])   # teacher-forced
    texts = runner.generate([prompt_tokens, ...], max_new_tokens=16)      # greedy, cached

Teacher-forced rows are right-padded to a `bucket` length (causal attention: padding after a
row changes nothing before it); partial batches are filled with empty rows, and the rows are
split over the mesh's data axes (padded to a multiple of its batch shards). Generation batches
are filled with copies of their first prompt and get one extra dummy row whose prompt is as
long as the bucket, and the cache size is a bucket too, which fixes every shape (each row reads
only its own positions, so the extra rows change nothing).
"""

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mta.data import pipeline
from mta.data.tokenizers import BYTE, Tokenizer
from mta.eval.generate import Generator
from mta.train.feed import shard_global_batch
from mta.train.mesh import batch_sharding
from mta.train.step import forward


@dataclass(frozen=True)
class Scored:
    """One sequence scored teacher-forced; every array is [L] (L = len(tokens) - 1), aligned
    with the targets tokens[1:]: `predicted` argmax ids, `logprob` log p(target) (float32),
    `targets`, `weights` (answer_mask[1:], float32)."""

    predicted: np.ndarray
    logprob: np.ndarray
    targets: np.ndarray
    weights: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        """bool [L]: argmax == target."""
        return self.predicted == self.targets


def bucket(length: int) -> int:
    """The padded length of a row: the next power of two from 128 to 512, then the next multiple
    of 512 (the suites' lengths are mostly powers of two, so little is wasted)."""
    if length <= 512:
        return max(128, 1 << (max(length, 1) - 1).bit_length())
    return -(-length // 512) * 512


def _token_scores(graphdef, params, batch):
    """-> (argmax ids [B, T] int32, log p(target) [B, T] float32), like eval_step per token."""
    logits_BTV = forward(graphdef, params, batch)
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    target_logp_BT = jnp.take_along_axis(logp_BTV, batch["targets"][..., None], axis=-1)[..., 0]
    return logits_BTV.argmax(-1).astype(jnp.int32), target_logp_BT


class Runner:
    """A model (graphdef + params on mesh) with jitted teacher-forced scoring and a Generator;
    `tok` (the model's tokenizer) pads, and decodes what it generates."""

    def __init__(self, graphdef: nnx.GraphDef, params: dict, mesh: Mesh, batch_size: int, tok=BYTE):
        self.params, self.mesh, self.batch_size = params, mesh, batch_size
        self.tok: Tokenizer = tok
        self._sharding = batch_sharding(mesh)  # rows split over the data axes
        self._score = jax.jit(functools.partial(_token_scores, graphdef))
        self._generator = Generator(nnx.merge(graphdef, params), tok)

    def score(self, records: list[dict]) -> list[Scored]:
        """Scores records with `tokens` and `answer_mask` ([L + 1] each, BOS first)."""
        out = []
        for start in range(0, len(records), self.batch_size):
            chunk = records[start : start + self.batch_size]
            examples = [pipeline.to_example(r, len(r["tokens"]), "drop") for r in chunk]
            empty = {"inputs": [], "targets": [], "weights": []}
            fill = [empty] * (self.batch_size - len(examples))
            length = bucket(max(len(e["inputs"]) for e in examples))
            batch = pipeline.pad_batch(examples + fill, length, self.tok.pad_id)
            predicted_BT, logprob_BT = jax.device_get(
                self._score(self.params, shard_global_batch(batch, self._sharding))
            )
            for row, example in enumerate(examples):
                size = len(example["inputs"])
                out.append(
                    Scored(
                        predicted_BT[row, :size],
                        logprob_BT[row, :size],
                        example["targets"],
                        example["weights"],
                    )
                )
        return out

    def generate(self, prompts: list[np.ndarray], max_new_tokens: int) -> list[str]:
        """Greedy continuations (exactly max_new_tokens tokens, no stop string) of prompts given
        as token ids [T_i] with BOS first; returns their decoded text."""
        texts = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = [np.asarray(p, np.int32) for p in prompts[start : start + self.batch_size]]
            fill = [chunk[0]] * (self.batch_size - len(chunk))
            dummy = np.full(bucket(max(len(p) for p in chunk)), self.tok.bos_id, np.int32)
            max_len = bucket(len(dummy) + max_new_tokens)
            rows = chunk + fill + [dummy]
            done = self._generator(rows, max_new_tokens, eos_id=None, max_len=max_len)
            texts += [completion.text for completion in done[: len(chunk)]]
        return texts

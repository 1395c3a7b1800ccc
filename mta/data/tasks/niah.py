"""Multi-needle needle-in-a-haystack: settings, evaluations (greedy recall, log-likelihood rank)
and registry entry.

Generator: `mta/data/niah.py`; TFDS builder: `mta/data/tfds_niah.py`.
"""

from dataclasses import dataclass, field

import numpy as np

from mta.data import niah
from mta.data.tasks import scoring
from mta.data.tasks.base import Cell, Eval, GeneratedSettings, Spec, Task, lazy
from mta.eval import metrics


@dataclass
class NiahSettings(GeneratedSettings):
    """Multi-needle needle-in-a-haystack (RULER style; see mta/data/niah.py)."""

    num_needles: int = 2  # needles "The special magic number for {key} is: {value}."
    num_asked: int = 1  # needles whose values the prompt asks for (<= num_needles)
    length: int = 2048  # prompt + answer bytes
    # Depths (percent of the haystack) from which each example draws its first needle's.
    depths: list[int] = field(default_factory=lambda: list(niah.DEFAULT_DEPTHS))
    haystack: str = "noise"  # noise | distractors (noise + other needles) | text (Python docs)
    num_distractors: int = 0  # needles never asked (haystack distractors only)

    def check(self) -> None:
        """Split sizes, seed, then `niah.check_niah`."""
        super().check()
        niah.check_niah(
            self.num_needles,
            self.num_asked,
            self.length,
            tuple(self.depths),
            self.haystack,
            self.num_distractors,
        )

    def builder_params(self) -> dict:
        """`tfds_niah.niah_config`'s arguments (depths as a tuple)."""
        return {**super().builder_params(), "depths": tuple(self.depths)}


@dataclass(frozen=True)
class NiahSpec(Spec):
    """Multi-needle NIAH: (num_needles, num_asked) pairs x depths (percent) x lengths (bytes)."""

    needles: tuple[tuple[int, int], ...] = ((1, 1),)
    depths: tuple[int, ...] = (0, 25, 50, 75, 100)
    lengths: tuple[int, ...] = (2048,)
    haystack: str = "noise"
    num_distractors: int = 0

    def cells(self):
        fixed = {"haystack": self.haystack, "num_distractors": self.num_distractors}
        return [
            Cell(
                {"num_needles": k, "num_asked": r, "depth": d, "length": n},
                "niah",
                {"num_needles": k, "num_asked": r, "length": n, "depths": (d,)}
                | fixed
                | {"seed": self.seed},
            )
            for k, r in self.needles
            for n in self.lengths
            for d in self.depths
        ]


@dataclass(frozen=True)
class NiahLoglikSpec(NiahSpec):
    """NIAH scored by log-likelihood: the true value ranked among `num_candidates` (the other
    needles' values, then random 7-digit numbers)."""

    num_candidates: int = 10

    def check(self):
        if self.num_candidates < 2:
            raise ValueError(f"num_candidates must be >= 2, got {self.num_candidates}")


def run_niah(runner, records, spec, suite) -> tuple[list[dict], list[dict]]:
    """recall: fraction of the asked 7-digit values found in the greedy output; all_found:
    fraction of examples with every asked value found."""
    outputs = scoring.greedy(runner, records, suite)
    samples = []
    for record, output in zip(records, outputs, strict=True):
        asked = [scoring.text(record["needle_values"][i]) for i in record["asked"]]
        recall = metrics.values_found(output, asked)
        answer = scoring.text(record["answer"])
        samples.append({"answer": answer, "output": output, "recall": recall})
    recalls = [s["recall"] for s in samples]
    row = {"recall": metrics.mean(recalls), "all_found": metrics.mean([r == 1 for r in recalls])}
    return [row], samples


def _candidates(values: list[str], true: str, count: int, rng: np.random.Generator) -> list[str]:
    """[true] + the other needles' values + distinct random 7-digit numbers: `count` in all."""
    chosen = list(dict.fromkeys([true] + [v for v in values if v != true]))[:count]
    while len(chosen) < count:
        number = str(int(rng.integers(10 ** (niah.VALUE_DIGITS - 1), 10**niah.VALUE_DIGITS)))
        if number not in chosen:
            chosen.append(number)
    return chosen


def run_niah_loglik(runner, records, spec, suite) -> tuple[list[dict], list[dict]]:
    """For each asked value (after the prompt and the true values asked before it), the rank of
    the true value among spec.num_candidates by summed log-probability of its tokens. top1:
    fraction ranked first; mrr: mean reciprocal rank; chance: 1 / num_candidates."""
    sequences, queries = [], []
    for index, record in enumerate(records):
        prompt, answer = scoring.prompt_tokens(record), scoring.text(record["answer"])
        values = [scoring.text(v) for v in record["needle_values"]]
        offset = 0
        for j, asked in enumerate(record["asked"]):
            true = values[asked]
            offset = answer.index(true, offset)
            rng = np.random.default_rng([spec.seed, index, j])
            candidates = _candidates(values, true, spec.num_candidates, rng)
            for candidate in candidates:
                before = runner.tok.encode(answer[:offset])
                continuation = np.concatenate([before, runner.tok.encode(candidate)])
                mask = np.zeros(len(prompt) + len(continuation), np.int32)
                mask[len(prompt) + len(before) :] = 1
                tokens = np.concatenate([prompt, continuation])
                sequences.append({"tokens": tokens, "answer_mask": mask})
            queries.append((index, true, candidates))
            offset += len(true)
    scores = [float((s.logprob * s.weights).sum()) for s in runner.score(sequences)]
    samples, start = [], 0
    for index, true, candidates in queries:
        own = scores[start : start + len(candidates)]
        start += len(candidates)
        rank = metrics.rank_of_true(own, 0)
        best = candidates[int(np.argmax(own))]
        samples.append({"example": index, "true": true, "rank": rank, "best": best})
    ranks = [s["rank"] for s in samples]
    row = {
        "top1": metrics.mean([r == 1 for r in ranks]),
        "mrr": metrics.mean([1.0 / r for r in ranks]),
        "mean_rank": metrics.mean(ranks),
        "chance": 1.0 / spec.num_candidates,
    }
    return [row], samples


TASK = Task(
    name="niah",
    settings=NiahSettings,
    make_config=lazy("mta.data.tfds_niah", "niah_config"),
    prepare=lazy("mta.data.tfds_niah", "prepare_niah"),
    evals={
        "niah": Eval(NiahSpec, run_niah, primary="recall"),
        "niah_loglik": Eval(NiahLoglikSpec, run_niah_loglik, primary="top1"),
    },
)

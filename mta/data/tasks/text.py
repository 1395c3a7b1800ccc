"""A local text corpus (language modelling): settings, the perplexity evaluation and registry
entry. Its records are whole documents, read in chunks of a row (`Task.documents`).

Corpus reading: `mta/data/text_corpus.py`; TFDS builder: `mta/data/tfds_text.py`.
"""

from dataclasses import dataclass

import numpy as np

from mta.data import text_corpus
from mta.data.checks import check_int
from mta.data.tasks.base import Cell, Eval, Settings, Spec, Task, lazy
from mta.eval import metrics


@dataclass
class TextSettings(Settings):
    """A local text corpus as byte-token documents, split into train, validation and test by
    document (see mta/data/tfds_text.py)."""

    manual_dir: str | None = None  # a directory of .txt/.jsonl files; null: the bundled corpus
    validation_fraction: float = 0.05  # share of the documents in the validation split
    test_fraction: float = 0.05  # share of the documents in the test split
    seed: int = 0  # seed of the documents' assignment to splits

    def check(self) -> None:
        """Fractions in (0, 1) summing to < 1 and seed >= 0 (the directory is read when the
        dataset is built)."""
        text_corpus.check_fractions(self.validation_fraction, self.test_fraction)
        check_int("seed", self.seed, 0)


@dataclass(frozen=True)
class PerplexitySpec(Spec):
    """Perplexity by position bucket on the test split of a text corpus, cut into chunks of
    seq_len + 1 tokens like the training pipeline. Bucket k: positions [buckets[k],
    buckets[k+1]). num_examples counts chunks. manual_dir None: the bundled corpus."""

    seq_len: int = 2048
    buckets: tuple[int, ...] = (0, 512, 1024, 2048)
    manual_dir: str | None = None

    def cells(self):
        params = {"manual_dir": self.manual_dir, "seed": self.seed}
        return [Cell({"seq_len": self.seq_len}, "text", params)]

    def check(self):
        b = self.buckets
        if self.seq_len < 1 or len(b) < 2 or list(b) != sorted(set(b)) or b[0] < 0:
            raise ValueError(
                f"need seq_len >= 1 and buckets an increasing list of >= 2 positions from 0; "
                f"got seq_len={self.seq_len}, buckets={list(b)}"
            )


def run_perplexity(runner, records, spec, suite) -> tuple[list[dict], list[dict]]:
    """Perplexity (per byte token) of the test chunks by target position bucket, and overall."""
    scored = runner.score(records)
    edges = list(spec.buckets)
    sums, counts = np.zeros(len(edges) - 1), np.zeros(len(edges) - 1)
    samples = []
    for index, s in enumerate(scored):
        bucket_sums, bucket_counts = metrics.position_buckets(-s.logprob, s.weights, edges)
        sums, counts = sums + bucket_sums, counts + bucket_counts
        nll = float(-(s.logprob * s.weights).sum())
        samples.append({"chunk": index, "tokens": float(s.weights.sum()), "nll_sum": nll})
    rows = [
        {"bucket": f"{low}-{high}", "perplexity": metrics.perplexity(total, count)}
        | {"tokens": count}
        for low, high, total, count in zip(edges[:-1], edges[1:], sums, counts, strict=True)
    ]
    everything = sum(s["tokens"] for s in samples)
    overall = metrics.perplexity(sum(s["nll_sum"] for s in samples), everything)
    return rows + [{"bucket": "all", "perplexity": overall, "tokens": everything}], samples


TASK = Task(
    name="text",
    settings=TextSettings,
    make_config=lazy("mta.data.tfds_text", "text_config"),
    prepare=lazy("mta.data.tfds_text", "prepare_text"),
    evals={"perplexity": Eval(PerplexitySpec, run_perplexity, primary="perplexity")},
    documents=True,
)

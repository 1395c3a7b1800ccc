"""Multi-query associative recall: settings, evaluation and registry entry.

Generator: `mta/data/mqar.py`; TFDS builder: `mta/data/tfds_mqar.py`.
"""

from dataclasses import dataclass

from mta.data import mqar
from mta.data.tasks import scoring
from mta.data.tasks.base import Cell, Eval, GeneratedSettings, Spec, Task, lazy
from mta.eval import metrics


@dataclass
class MqarSettings(GeneratedSettings):
    """Multi-query associative recall (Zoology) in bytes: key-value pairs, then every key
    queried once in noise; the loss is on the values (see mta/data/mqar.py)."""

    num_pairs: int = 16  # key-value pairs, each key queried once
    key_len: int = 3  # letters per key
    value_len: int = 3  # digits per value
    length: int = 1024  # prompt bytes (the query region fills what the pairs leave)
    alpha: float = mqar.DEFAULT_ALPHA  # power law of the query gaps: small alpha, close queries

    def check(self) -> None:
        """Split sizes, seed, then `mqar.check_mqar`."""
        super().check()
        mqar.check_mqar(self.num_pairs, self.key_len, self.value_len, self.length, self.alpha)


@dataclass(frozen=True)
class MqarSpec(Spec):
    """Multi-query associative recall, teacher-forced on the values, across lengths."""

    num_pairs: int = 16
    key_len: int = 3
    value_len: int = 3
    alpha: float = 0.01
    lengths: tuple[int, ...] = (1024,)

    def cells(self):
        shape = {"num_pairs": self.num_pairs, "key_len": self.key_len, "value_len": self.value_len}
        fixed = shape | {"alpha": self.alpha, "seed": self.seed}
        return [Cell(shape | {"length": n}, "mqar", fixed | {"length": n}) for n in self.lengths]


def run_mqar(runner, records, spec, suite) -> tuple[list[dict], list[dict]]:
    """Teacher-forced on answer_mask: accuracy = queried values predicted exactly (all their
    tokens), exact_match = examples with every value right, token_accuracy."""
    scored = runner.score(records)
    spans = [metrics.span_accuracy(s.correct, s.weights) for s in scored]
    tokens = sum(float(s.weights.sum()) for s in scored)
    samples = [
        {"answer": scoring.text(r["answer"]), "predicted": scoring.answer_text(s, runner.tok)}
        | {"values_correct": c, "values": n}
        for r, s, (c, n) in zip(records, scored, spans, strict=True)
    ]
    row = {
        "accuracy": sum(c for c, _ in spans) / max(sum(n for _, n in spans), 1),
        "exact_match": metrics.mean([c == n for c, n in spans]),
        "token_accuracy": sum(float((s.correct * s.weights).sum()) for s in scored) / tokens,
    }
    return [row], samples


TASK = Task(
    name="mqar",
    settings=MqarSettings,
    make_config=lazy("mta.data.tfds_mqar", "mqar_config"),
    prepare=lazy("mta.data.tfds_mqar", "prepare_mqar"),
    evals={"mqar": Eval(MqarSpec, run_mqar, primary="accuracy")},
)

"""BabiLong-style bAbI QA1-QA5: settings, evaluation and registry entry.

Generator: `mta/data/babi.py`; TFDS builder: `mta/data/tfds_babi.py`.
"""

from dataclasses import dataclass

from mta.data import babi
from mta.data.tasks import scoring
from mta.data.tasks.base import Cell, Eval, GeneratedSettings, Spec, Task, lazy
from mta.eval import metrics


@dataclass
class BabiSettings(GeneratedSettings):
    """bAbI QA1-QA5 from a world simulator, the facts spread in filler text (BabiLong style; see
    mta/data/babi.py)."""

    task: int = 1  # the bAbI task: 1 | 2 | 3 | 4 | 5
    length: int = 0  # prompt + answer bytes with filler; 0: the facts only

    def check(self) -> None:
        """Split sizes, seed, then `babi.check_babi`."""
        super().check()
        babi.check_babi(self.task, self.length)


@dataclass(frozen=True)
class BabiSpec(Spec):
    """BabiLong-style QA1-QA5 over story lengths (bytes; 0 = the facts only)."""

    tasks: tuple[int, ...] = (1, 2, 3, 4, 5)
    lengths: tuple[int, ...] = (0,)

    def cells(self):
        return [
            Cell({"qa": t, "length": n}, "babi", {"task": t, "length": n, "seed": self.seed})
            for n in self.lengths
            for t in self.tasks
        ]


def run_babi(runner, records, spec, suite) -> tuple[list[dict], list[dict]]:
    """accuracy: the greedy output's first word starts with the one-word answer (case-
    insensitive; no bAbI answer is a prefix of another, and a model trained without an
    end-of-answer token goes on writing after the answer: "kitchenJohn" is "kitchen")."""
    outputs = scoring.greedy(runner, records, suite)
    samples = [
        {"question": scoring.text(r["question"]), "answer": scoring.text(r["answer"])}
        | {"output": o, "correct": metrics.first_word_starts_with(o, scoring.text(r["answer"]))}
        for r, o in zip(records, outputs, strict=True)
    ]
    return [{"accuracy": metrics.mean([s["correct"] for s in samples])}], samples


TASK = Task(
    name="babi",
    settings=BabiSettings,
    make_config=lazy("mta.data.tfds_babi", "babi_config"),
    prepare=lazy("mta.data.tfds_babi", "prepare_babi"),
    evals={"babi": Eval(BabiSpec, run_babi, primary="accuracy")},
)

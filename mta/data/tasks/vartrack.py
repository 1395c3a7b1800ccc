"""RULER's variable tracking: settings, evaluation and registry entry.

Generator: `mta/data/vartrack.py`; TFDS builder: `mta/data/tfds_vartrack.py`.
"""

from dataclasses import dataclass

from mta.data import vartrack
from mta.data.tasks import scoring
from mta.data.tasks.base import Cell, Eval, GeneratedSettings, Spec, Task, lazy
from mta.eval import metrics


@dataclass
class VartrackSettings(GeneratedSettings):
    """Variable tracking: chains of `VAR X = VAR Y` in a haystack; the answer names every
    variable of the asked value (see mta/data/vartrack.py)."""

    num_chains: int = 1  # chains of assignments (one is asked)
    num_hops: int = 4  # copies per chain after its first assignment
    length: int = 4096  # prompt + answer bytes
    haystack: str = "noise"  # noise | text (Python docs)

    def check(self) -> None:
        """Split sizes, seed, then `vartrack.check_vartrack`."""
        super().check()
        vartrack.check_vartrack(self.num_chains, self.num_hops, self.length, self.haystack)


@dataclass(frozen=True)
class VartrackSpec(Spec):
    """Variable tracking (greedy output must name every variable of the chain) across lengths."""

    num_chains: int = 1
    num_hops: int = 4
    haystack: str = "noise"
    lengths: tuple[int, ...] = (4096,)

    def cells(self):
        fixed = {"num_chains": self.num_chains, "num_hops": self.num_hops}
        return [
            Cell(
                {**fixed, "length": n},
                "vartrack",
                {**fixed, "length": n, "haystack": self.haystack, "seed": self.seed},
            )
            for n in self.lengths
        ]


def run_vartrack(runner, records, spec, suite) -> tuple[list[dict], list[dict]]:
    """accuracy: the greedy output contains every variable name of the answer; recall: the
    fraction of names it contains."""
    outputs = scoring.greedy(runner, records, suite)
    samples = []
    for record, output in zip(records, outputs, strict=True):
        names = scoring.text(record["answer"]).split()
        samples.append(
            {"answer": " ".join(names), "output": output}
            | {"correct": metrics.all_found(output, names)}
            | {"recall": metrics.values_found(output, names)}
        )
    row = {"accuracy": metrics.mean([s["correct"] for s in samples])}
    return [row | {"recall": metrics.mean([s["recall"] for s in samples])}], samples


TASK = Task(
    name="vartrack",
    settings=VartrackSettings,
    make_config=lazy("mta.data.tfds_vartrack", "vartrack_config"),
    prepare=lazy("mta.data.tfds_vartrack", "prepare_vartrack"),
    evals={"vartrack": Eval(VartrackSpec, run_vartrack, primary="accuracy")},
)

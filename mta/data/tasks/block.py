# ruff: noqa: E741 (`l` is the name the paper gives the number of query letters)
"""The "find the block" toy task of docs/mta.md: settings, evaluation and registry entry.

Generator: `mta/data/block_task.py`; TFDS builder: `mta/data/tfds_block_task.py`.
"""

from dataclasses import dataclass

from mta.data import block_task
from mta.data.tasks import scoring
from mta.data.tasks.base import Cell, Eval, GeneratedSettings, Spec, Task, lazy
from mta.eval import metrics


@dataclass
class BlockSettings(GeneratedSettings):
    """The "find the block" toy task of docs/mta.md."""

    n: int = 5  # letters per block
    l: int = 2  # noqa: E741  query letters
    variant: str = "all"  # all | first | last
    length: int = 319  # prompt + answer characters
    num_blocks: int = 0  # 0 means as many as fit in `length`
    num_train: int = 100_000  # examples in the train split

    def check(self) -> None:
        """Split sizes, seed, then `block_task.check_block_task`."""
        super().check()
        block_task.check_block_task(
            self.n, self.l, self.variant, self.length, self.num_blocks or None
        )

    def builder_params(self) -> dict:
        """`tfds_block_task.block_task_config`'s arguments (num_blocks None: fill `length`)."""
        return {**super().builder_params(), "num_blocks": self.num_blocks or None}

    def example_length(self) -> int:
        """len(prompt) + len(answer), the same for every example."""
        blocks = self.num_blocks or block_task.blocks_for_length(
            self.n, self.l, self.variant, self.length
        )
        return block_task.example_length(self.n, self.l, self.variant, blocks)


@dataclass(frozen=True)
class BlockSpec(Spec):
    """The block task: exact-match error, teacher-forced, per variant and total length."""

    n: int = 5
    l: int = 2  # noqa: E741 (the paper's name)
    variants: tuple[str, ...] = ("all",)
    lengths: tuple[int, ...] = (319,)

    def cells(self):
        return [
            Cell(
                {"n": self.n, "l": self.l, "variant": v, "length": n},
                "block",
                {"n": self.n, "l": self.l, "variant": v, "length": n, "seed": self.seed},
            )
            for v in self.variants
            for n in self.lengths
        ]


def run_block(runner, records, spec, suite) -> tuple[list[dict], list[dict]]:
    """Exact-match error (%) of the teacher-forced argmax over the answer tokens, and the mean
    answer-token loss."""
    scored = runner.score(records)
    exact = [metrics.exact_match(s.correct, s.weights) for s in scored]
    samples = [
        {"prompt": scoring.text(r["prompt"]), "answer": scoring.text(r["answer"])}
        | {"predicted": scoring.answer_text(s, runner.tok), "exact": e}
        for r, s, e in zip(records, scored, exact, strict=True)
    ]
    row = {"exact_match_error": 100.0 * (1.0 - metrics.mean(exact))}
    return [row | {"loss": scoring.answer_loss(scored)}], samples


TASK = Task(
    name="block",
    settings=BlockSettings,
    make_config=lazy("mta.data.tfds_block_task", "block_task_config"),
    prepare=lazy("mta.data.tfds_block_task", "prepare_block_task"),
    evals={"block": Eval(BlockSpec, run_block, primary="exact_match_error")},
)

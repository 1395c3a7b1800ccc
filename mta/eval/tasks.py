"""Running the suite's tasks: test examples from the TFDS builders -> model -> metric rows.

    rows, samples = run_suite(runner, suite, data_dir)

`rows[task]` is a list of flat dicts, one per grid point (perplexity: one per position bucket
plus "all"): the cell's coordinates, then its metrics and `examples`. `samples[task]` holds one
dict per example (per asked value for niah_loglik, per chunk for perplexity) with the cell's
coordinates, what the model produced and its score. Each evaluation's scoring lives with its
task (`mta/data/tasks/<task>.py`, registered in `EVALS`).
"""

import contextlib
import sys
import time

from mta.data import pipeline, tfds_common, tokenizers
from mta.data.tasks import EVALS, TASKS
from mta.eval.runner import Runner
from mta.eval.suite import Cell, Spec, Suite, SuiteError, builder_config


def load_test_records(
    cell: Cell, num_examples: int, data_dir: str, seq_len: int = 0, tok=tokenizers.BYTE
) -> list[dict]:
    """The first num_examples records of the cell's test split tokenized by `tok`, building its
    dataset on first use (documents: chunks of seq_len + 1 tokens, as training cuts them)."""
    task = TASKS[cell.source]
    config = builder_config(cell, num_examples)
    if tok.kind != "byte":
        config = tfds_common.with_tokenizer(config, tokenizers.spec(tok))
    source = task.prepare(config, data_dir).as_data_source()["test"]
    if task.documents:
        source = pipeline.TextChunks(source, seq_len + 1)
    return [source[i] for i in range(min(num_examples, len(source)))]


def run_suite(
    runner: Runner, suite: Suite, data_dir: str, log=lambda message: print(message, file=sys.stderr)
) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Runs every grid point of every task; returns (rows, samples) by task (see module doc)."""
    rows: dict[str, list[dict]] = {}
    samples: dict[str, list[dict]] = {}
    for task, specs in suite.tasks.items():
        for spec in specs:
            for cell in spec.cells():
                start = time.perf_counter()
                try:
                    records = cell_records(cell, spec, suite, data_dir, runner.tok)
                except ValueError as err:  # e.g. fewer unique examples than asked for
                    message = " ".join(str(err).split())
                    raise SuiteError(f"tasks.{task} {cell.coords}: {message}") from None
                _, evaluation = EVALS[task]
                cell_rows, cell_samples = evaluation.run(runner, records, spec, suite)
                rows.setdefault(task, []).extend(
                    {**cell.coords, **r, "examples": len(records)} for r in cell_rows
                )
                samples.setdefault(task, []).extend({**cell.coords, **s} for s in cell_samples)
                headline = ", ".join(
                    f"{k}={v:.4g}" for k, v in cell_rows[-1].items() if isinstance(v, float)
                )
                took = time.perf_counter() - start
                log(f"{task} {cell.coords}: {headline} ({len(records)} examples, {took:.1f}s)")
    return rows, samples


def cell_records(
    cell: Cell, spec: Spec, suite: Suite, data_dir: str, tok=tokenizers.BYTE
) -> list[dict]:
    """The cell's test records tokenized by `tok` (building its dataset on first use); a
    document task's spec gives the chunk length (`seq_len`)."""
    seq_len = getattr(spec, "seq_len", 0) if TASKS[cell.source].documents else 0
    # TFDS prints its build messages on stdout, which the CLI keeps for its JSON summary.
    with tfds_common.quiet_tfds(), contextlib.redirect_stdout(sys.stderr):
        return load_test_records(cell, suite.examples(spec), data_dir, seq_len, tok)

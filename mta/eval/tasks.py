"""Running the suite's tasks: test examples from the TFDS builders -> model -> metric rows.

    rows, samples = run_suite(runner, suite, data_dir)

`rows[task]` is a list of flat dicts, one per grid point (perplexity: one per position bucket
plus "all"): the cell's coordinates, then its metrics and `examples`. `samples[task]` holds one
dict per example (per asked value for niah_loglik, per chunk for perplexity) with the cell's
coordinates, what the model produced and its score.
"""

import contextlib
import sys
import time
from collections.abc import Callable

import numpy as np

from mta.data import (
    niah,
    pipeline,
    tfds_babi,
    tfds_block_task,
    tfds_common,
    tfds_mqar,
    tfds_niah,
    tfds_text,
    tfds_vartrack,
    tokenizer,
)
from mta.eval import metrics
from mta.eval.runner import Runner, Scored
from mta.eval.suite import (
    Cell,
    NiahLoglikSpec,
    PerplexitySpec,
    Spec,
    Suite,
    SuiteError,
    builder_config,
)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _builder(cell: Cell, num_examples: int, data_dir: str):
    """Builds (once) the cell's dataset in data_dir and returns the builder."""
    prepare = {
        "block": tfds_block_task.prepare_block_task,
        "niah": tfds_niah.prepare_niah,
        "babi": tfds_babi.prepare_babi,
        "mqar": tfds_mqar.prepare_mqar,
        "vartrack": tfds_vartrack.prepare_vartrack,
        "text": tfds_text.prepare_text,
    }[cell.source]
    return prepare(builder_config(cell, num_examples), data_dir)


def load_test_records(cell: Cell, num_examples: int, data_dir: str, seq_len: int = 0) -> list[dict]:
    """The first num_examples records of the cell's test split (text: chunks of seq_len + 1
    tokens, as the training pipeline cuts them)."""
    source = _builder(cell, num_examples, data_dir).as_data_source()["test"]
    if cell.source == "text":
        source = pipeline.TextChunks(source, seq_len + 1)
    return [source[i] for i in range(min(num_examples, len(source)))]


def _prompt(record: dict) -> np.ndarray:
    """The prompt's token ids (BOS + prompt bytes): tokens before the first answer token."""
    return np.asarray(record["tokens"])[: int(np.argmax(np.asarray(record["answer_mask"]) > 0))]


def _answer_text(scored: Scored) -> str:
    return tokenizer.decode(scored.predicted[scored.weights > 0])


def run_block(runner: Runner, records, spec, suite) -> tuple[list[dict], list[dict]]:
    """Exact-match error (%) of the teacher-forced argmax over the answer tokens, and the mean
    answer-token loss."""
    scored = runner.score(records)
    exact = [metrics.exact_match(s.correct, s.weights) for s in scored]
    nll = sum(float(-(s.logprob * s.weights).sum()) for s in scored)
    loss = nll / max(sum(float(s.weights.sum()) for s in scored), 1.0)
    samples = [
        {"prompt": _text(r["prompt"]), "answer": _text(r["answer"])}
        | {"predicted": _answer_text(s), "exact": e}
        for r, s, e in zip(records, scored, exact, strict=True)
    ]
    row = {"exact_match_error": 100.0 * (1.0 - metrics.mean(exact)), "loss": float(loss)}
    return [row], samples


def run_mqar(runner: Runner, records, spec, suite) -> tuple[list[dict], list[dict]]:
    """Teacher-forced on answer_mask: accuracy = queried values predicted exactly (all their
    tokens), exact_match = examples with every value right, token_accuracy."""
    scored = runner.score(records)
    spans = [metrics.span_accuracy(s.correct, s.weights) for s in scored]
    tokens = sum(float(s.weights.sum()) for s in scored)
    samples = [
        {"answer": _text(r["answer"]), "predicted": _answer_text(s), "values_correct": c}
        | {"values": n}
        for r, s, (c, n) in zip(records, scored, spans, strict=True)
    ]
    row = {
        "accuracy": sum(c for c, _ in spans) / max(sum(n for _, n in spans), 1),
        "exact_match": metrics.mean([c == n for c, n in spans]),
        "token_accuracy": sum(float((s.correct * s.weights).sum()) for s in scored) / tokens,
    }
    return [row], samples


def _greedy(runner: Runner, records, suite: Suite) -> list[str]:
    """Greedy outputs: the longest answer's length plus suite.extra_new_tokens tokens."""
    longest = max(len(bytes(r["answer"])) for r in records)
    return runner.generate([_prompt(r) for r in records], longest + suite.extra_new_tokens)


def run_niah(runner: Runner, records, spec, suite) -> tuple[list[dict], list[dict]]:
    """recall: fraction of the asked 7-digit values found in the greedy output; all_found:
    fraction of examples with every asked value found."""
    outputs = _greedy(runner, records, suite)
    samples = []
    for record, output in zip(records, outputs, strict=True):
        asked = [_text(record["needle_values"][i]) for i in record["asked"]]
        recall = metrics.values_found(output, asked)
        samples.append({"answer": _text(record["answer"]), "output": output, "recall": recall})
    recalls = [s["recall"] for s in samples]
    row = {"recall": metrics.mean(recalls), "all_found": metrics.mean([r == 1 for r in recalls])}
    return [row], samples


def run_babi(runner: Runner, records, spec, suite) -> tuple[list[dict], list[dict]]:
    """accuracy: the greedy output's first word equals the one-word answer (case-insensitive)."""
    outputs = _greedy(runner, records, suite)
    samples = [
        {"question": _text(r["question"]), "answer": _text(r["answer"]), "output": o}
        | {"correct": metrics.first_word_match(o, _text(r["answer"]))}
        for r, o in zip(records, outputs, strict=True)
    ]
    return [{"accuracy": metrics.mean([s["correct"] for s in samples])}], samples


def run_vartrack(runner: Runner, records, spec, suite) -> tuple[list[dict], list[dict]]:
    """accuracy: the greedy output contains every variable name of the answer; recall: the
    fraction of names it contains."""
    outputs = _greedy(runner, records, suite)
    samples = []
    for record, output in zip(records, outputs, strict=True):
        names = _text(record["answer"]).split()
        samples.append(
            {"answer": " ".join(names), "output": output}
            | {"correct": metrics.all_found(output, names)}
            | {"recall": metrics.values_found(output, names)}
        )
    return [
        {
            "accuracy": metrics.mean([s["correct"] for s in samples]),
            "recall": metrics.mean([s["recall"] for s in samples]),
        }
    ], samples


def run_perplexity(
    runner: Runner, records, spec: PerplexitySpec, suite
) -> tuple[list[dict], list[dict]]:
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


def _candidates(values: list[str], true: str, count: int, rng: np.random.Generator) -> list[str]:
    """[true] + the other needles' values + distinct random 7-digit numbers: `count` in all."""
    chosen = list(dict.fromkeys([true] + [v for v in values if v != true]))[:count]
    while len(chosen) < count:
        number = str(int(rng.integers(10 ** (niah.VALUE_DIGITS - 1), 10**niah.VALUE_DIGITS)))
        if number not in chosen:
            chosen.append(number)
    return chosen


def run_niah_loglik(
    runner: Runner, records, spec: NiahLoglikSpec, suite
) -> tuple[list[dict], list[dict]]:
    """For each asked value (after the prompt and the true values asked before it), the rank of
    the true value among spec.num_candidates by summed log-probability of its tokens. top1:
    fraction ranked first; mrr: mean reciprocal rank; chance: 1 / num_candidates."""
    sequences, queries = [], []
    for index, record in enumerate(records):
        prompt, answer = _prompt(record), _text(record["answer"])
        values = [_text(v) for v in record["needle_values"]]
        offset = 0
        for j, asked in enumerate(record["asked"]):
            true = values[asked]
            offset = answer.index(true, offset)
            rng = np.random.default_rng([spec.seed, index, j])
            candidates = _candidates(values, true, spec.num_candidates, rng)
            for candidate in candidates:
                continuation = tokenizer.encode(answer[:offset] + candidate)
                mask = np.zeros(len(prompt) + len(continuation), np.int32)
                mask[len(prompt) + offset :] = 1
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


RUNNERS: dict[str, Callable] = {
    "block": run_block,
    "niah": run_niah,
    "babi": run_babi,
    "mqar": run_mqar,
    "vartrack": run_vartrack,
    "perplexity": run_perplexity,
    "niah_loglik": run_niah_loglik,
}


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
                    records = cell_records(cell, spec, suite, data_dir)
                except ValueError as err:  # e.g. fewer unique examples than asked for
                    message = " ".join(str(err).split())
                    raise SuiteError(f"tasks.{task} {cell.coords}: {message}") from None
                cell_rows, cell_samples = RUNNERS[task](runner, records, spec, suite)
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


def cell_records(cell: Cell, spec: Spec, suite: Suite, data_dir: str) -> list[dict]:
    """The cell's test records (building its dataset on first use)."""
    seq_len = spec.seq_len if isinstance(spec, PerplexitySpec) else 0
    # TFDS prints its build messages on stdout, which the CLI keeps for its JSON summary.
    with tfds_common.quiet_tfds(), contextlib.redirect_stdout(sys.stderr):
        return load_test_records(cell, suite.examples(spec), data_dir, seq_len)

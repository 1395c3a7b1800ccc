"""Helpers of the tasks' scoring functions: records in, text, prompts and greedy outputs out.

A scoring function `run(runner, records, spec, suite)` gets a `mta.eval.runner.Runner` (its
`score` scores records teacher-forced, its `generate` continues prompts greedily) and returns
(rows, samples); metrics are the pure functions of `mta.eval.metrics`.
"""

import numpy as np

from mta.data.tokenizers import Tokenizer


def text(value) -> str:
    """A record's text feature (bytes) or any value as a str."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def prompt_tokens(record: dict) -> np.ndarray:
    """The prompt's token ids (BOS + prompt ids): tokens before the first answer token."""
    return np.asarray(record["tokens"])[: int(np.argmax(np.asarray(record["answer_mask"]) > 0))]


def answer_text(scored, tok: Tokenizer) -> str:
    """The teacher-forced argmax over the answer tokens of a `Scored`, decoded by `tok` (the
    runner's tokenizer)."""
    return tok.decode(scored.predicted[scored.weights > 0])


def answer_loss(scored: list) -> float:
    """Mean negative log-likelihood per answer token over scored examples."""
    nll = sum(float(-(s.logprob * s.weights).sum()) for s in scored)
    return nll / max(sum(float(s.weights.sum()) for s in scored), 1.0)


def greedy(runner, records, suite) -> list[str]:
    """Greedy outputs (decoded text) after each record's prompt: the longest answer's length in
    bytes (no fewer than its tokens under byte-level and SentencePiece tokenizers) plus
    suite.extra_new_tokens tokens."""
    longest = max(len(bytes(r["answer"])) for r in records)
    return runner.generate([prompt_tokens(r) for r in records], longest + suite.extra_new_tokens)

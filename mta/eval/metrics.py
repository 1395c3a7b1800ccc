"""Pure metric functions of the evaluation suite: numpy arrays and strings in, numbers out.

Teacher-forced metrics take per-token arrays of one example ([T], aligned with the targets);
generation metrics take the generated text. Each evaluation's headline metric is its
`Eval.primary` (mta/data/tasks; `mta.eval.suite.PRIMARY`).
"""

import math
import string
from collections.abc import Sequence

import numpy as np


def exact_match(correct_T: np.ndarray, mask_T: np.ndarray) -> bool:
    """True if the example has at least one masked token and every masked token is correct.

    correct_T: bool [T] (argmax == target); mask_T: [T], nonzero where the answer is.
    """
    mask_T = np.asarray(mask_T) > 0
    return bool(mask_T.any() and np.asarray(correct_T)[mask_T].all())


def answer_spans(mask_T: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of consecutive nonzero entries of mask_T [T]."""
    padded = np.concatenate([[0], (np.asarray(mask_T) > 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def span_accuracy(correct_T: np.ndarray, mask_T: np.ndarray) -> tuple[int, int]:
    """(answer spans whose every token is correct, answer spans) for one example: an MQAR
    value is one span of consecutive masked tokens."""
    spans = answer_spans(mask_T)
    correct_T = np.asarray(correct_T)
    return sum(bool(correct_T[a:b].all()) for a, b in spans), len(spans)


def values_found(text: str, values: Sequence[str]) -> float:
    """The fraction of `values` that occur as substrings of `text` (1.0 for no values)."""
    if not values:
        return 1.0
    return sum(value in text for value in values) / len(values)


def all_found(text: str, words: Sequence[str]) -> bool:
    """True if every word occurs in text."""
    return all(word in text for word in words)


def first_word(text: str) -> str:
    """The first whitespace-separated word of text without surrounding punctuation ("" if none)."""
    for word in text.split():
        word = word.strip(string.punctuation)
        if word:
            return word
    return ""


def first_word_starts_with(text: str, label: str) -> bool:
    """True if the first word of text starts with label, ignoring case and punctuation: the
    match for one-word answers from a closed set in which no answer is a prefix of another,
    scored on models that continue the text after the answer (no end-of-answer token)."""
    return bool(label.strip()) and first_word(text).lower().startswith(label.strip().lower())


def position_buckets(
    nll_BT: np.ndarray, weights_BT: np.ndarray, edges: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and token counts by position: bucket k holds positions [edges[k], edges[k+1]).

    nll_BT: float [B, T] negative log-likelihood of each target; weights_BT: [B, T], 0 where a
    position does not count (padding). Returns (nll sums [K], counts [K]), K = len(edges) - 1.
    """
    nll_BT, weights_BT = np.asarray(nll_BT, np.float64), np.asarray(weights_BT, np.float64)
    position_T = np.arange(nll_BT.shape[-1])
    sums, counts = [], []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bucket_T = (position_T >= low) & (position_T < high)
        sums.append(float((nll_BT * weights_BT)[..., in_bucket_T].sum()))
        counts.append(float(weights_BT[..., in_bucket_T].sum()))
    return np.array(sums), np.array(counts)


def perplexity(nll_sum: float, count: float) -> float:
    """exp(mean NLL per token); NaN when there are no tokens."""
    return math.exp(nll_sum / count) if count > 0 else math.nan


def rank_of_true(scores: Sequence[float], true_index: int = 0) -> int:
    """1-based rank of the true candidate by score (higher is better), ties counted against it:
    1 + the number of other candidates scoring at least as high. A model that scores all
    candidates alike gets the worst rank, never a lucky first."""
    scores = np.asarray(scores, np.float64)
    others = np.delete(scores, true_index)
    return 1 + int((others >= scores[true_index]).sum())


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean as a float; NaN for no values."""
    return float(np.mean(values)) if len(values) else math.nan

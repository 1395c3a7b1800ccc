"""The suite's metric functions on hand-made predictions with known scores."""

import math
from pathlib import Path

import numpy as np
import pytest

from mta.eval import metrics, report


def test_exact_match_needs_every_masked_token_right():
    mask = np.array([0, 0, 1, 1, 0])
    assert metrics.exact_match(np.array([0, 0, 1, 1, 0], bool), mask)
    assert metrics.exact_match(np.array([0, 1, 1, 1, 1], bool), mask)  # unmasked errors ignored
    assert not metrics.exact_match(np.array([1, 1, 1, 0, 1], bool), mask)
    assert not metrics.exact_match(np.ones(5, bool), np.zeros(5))  # nothing to get right


def test_answer_spans_and_span_accuracy():
    mask = np.array([1, 1, 0, 0, 1, 1, 1, 0, 1])
    assert metrics.answer_spans(mask) == [(0, 2), (4, 7), (8, 9)]
    correct = np.array([1, 1, 0, 0, 1, 0, 1, 0, 1], bool)  # the middle span has one wrong token
    assert metrics.span_accuracy(correct, mask) == (2, 3)
    assert metrics.span_accuracy(correct, np.zeros(9)) == (0, 0)


def test_values_found_and_all_found():
    output = "The numbers are 1234567 and 7654321."
    assert metrics.values_found(output, ["1234567", "7654321"]) == 1.0
    assert metrics.values_found(output, ["1234567", "1111111"]) == 0.5
    assert metrics.values_found(output, ["2222222", "1111111", "3333333"]) == 0.0
    assert metrics.values_found("", []) == 1.0
    assert metrics.all_found("QPZKA HRTMB LXOWE", ["QPZKA", "LXOWE"])
    assert not metrics.all_found("QPZKA HRTMB", ["QPZKA", "LXOWE"])


@pytest.mark.parametrize(
    "output, label, expected",
    [
        ("kitchenJohn went", "kitchen", True),  # what follows the answer does not count
        ("kitchen\nQuestion: ...", "kitchen", True),
        ("... Mary", "Mary", True),  # a lone punctuation token is not a word
        (" Kitchen. Then", "kitchen", True),
        ("the kitchen", "kitchen", False),  # only the first word counts
        ("kitch", "kitchen", False),
        ("", "kitchen", False),
        ("kitchen", "", False),
    ],
)
def test_first_word_starts_with(output, label, expected):
    assert metrics.first_word_starts_with(output, label) is expected


def test_no_babi_answer_is_a_prefix_of_another():
    """What makes first_word_starts_with exact for bAbI: every answer word of QA1-QA5."""
    from mta.data import babi

    words = {w.lower() for w in (*babi.ACTORS, *babi.QA5_ACTORS, *babi.ROOMS, *babi.OBJECTS)}
    words |= set(babi.DIRECTIONS)
    assert not [(a, b) for a in words for b in words if a != b and b.startswith(a)]


def test_position_buckets_and_perplexity():
    nll = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    weights = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])  # the second row is padded after 2 tokens
    sums, counts = metrics.position_buckets(nll, weights, [0, 1, 3, 4])
    np.testing.assert_allclose(sums, [1 + 5, 2 + 3 + 6, 4])
    np.testing.assert_allclose(counts, [2, 3, 1])
    assert metrics.perplexity(sums[0], counts[0]) == pytest.approx(math.exp(3.0))
    assert math.isnan(metrics.perplexity(0.0, 0.0))
    # a uniform model over V tokens has perplexity V
    assert metrics.perplexity(10 * math.log(259), 10) == pytest.approx(259)


def test_rank_of_true_counts_ties_against_the_truth():
    assert metrics.rank_of_true([-1.0, -5.0, -3.0]) == 1
    assert metrics.rank_of_true([-4.0, -5.0, -3.0, -1.0]) == 3
    assert metrics.rank_of_true([-2.0, -2.0, -2.0]) == 3  # all alike: worst, not lucky first
    assert metrics.rank_of_true([-9.0, -1.0, -2.0], true_index=1) == 1


def test_mean():
    assert metrics.mean([True, False, True, True]) == 0.75
    assert math.isnan(metrics.mean([]))


def test_summary_averages_primary_metrics():
    rows = {
        "niah": [{"length": 1, "recall": 0.5}, {"length": 2, "recall": 1.0}],
        "block": [{"length": 1, "exact_match_error": 20.0}],
        "perplexity": [
            {"bucket": "0-8", "perplexity": 9.0},
            {"bucket": "all", "perplexity": 4.0},
        ],
    }
    assert report.summary(rows) == {
        "niah/recall": 0.75,
        "block/exact_match_error": 20.0,
        "perplexity/perplexity": 4.0,  # the overall one, not a mean over buckets
    }


SUITES = sorted((Path(__file__).resolve().parents[2] / "configs/eval").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suites_load_and_validate_every_grid_point(path):
    from mta.eval.suite import load_suite

    suite = load_suite(path)
    assert suite.tasks

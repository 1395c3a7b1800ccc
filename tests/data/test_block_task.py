# ruff: noqa: E741 (`l` is the paper's name for the number of query letters)
"""Tests for the "find the block" generator and its TFDS builder."""

import itertools
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.data import block_task, tfds_block_task, tokenizer
from mta.data.block_task import blocks_for_length, encode_example, generate_example
from mta.data.tfds_block_task import block_task_config, prepare_block_task

LETTERS = set(string.ascii_lowercase)


def check_example(prompt, answer, n, l, variant, num_blocks=None, length=None):
    """Checks every invariant of the task by re-parsing the prompt; returns the blocks."""
    assert set(prompt) <= LETTERS | {".", "#"}
    assert prompt.count("#") == 1
    body, query = prompt.split("#")
    blocks = body.split(".")
    if num_blocks is not None:
        assert len(blocks) == num_blocks
    assert len(blocks) >= 2
    for block in blocks:
        assert len(block) == n and len(set(block)) == n and set(block) <= LETTERS
    assert len(set(blocks)) == len(blocks), "blocks must be unique"
    assert len(query) == l and len(set(query)) == l and set(query) <= LETTERS
    containing = [block for block in blocks if set(query) <= set(block)]
    assert len(containing) == 1, "exactly one block must contain all query letters"
    target = containing[0]
    expected = {"all": target, "first": target[0], "last": target[-1]}[variant]
    assert answer == expected
    if length is not None:
        assert len(prompt) + len(answer) <= length
        if num_blocks is None:
            # One more block (n letters and a dot) would not fit.
            assert len(prompt) + len(answer) + n + 1 > length
    return blocks, query, target


@pytest.mark.parametrize(
    "n,l,variant", list(itertools.product([3, 5, 8], [1, 2, 3], block_task.VARIANTS))
)
@pytest.mark.parametrize("length", [40, 319])
def test_invariants_fill_length(n, l, variant, length):
    rng = np.random.default_rng(n * 100 + l)
    num_blocks = blocks_for_length(n, l, variant, length)
    for _ in range(60):
        prompt, answer = generate_example(rng, n, l, variant, num_blocks)
        check_example(prompt, answer, n, l, variant, length=length)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 12),
    l=st.integers(1, 12),
    variant=st.sampled_from(block_task.VARIANTS),
    num_blocks=st.integers(2, 30),
    seed=st.integers(0, 2**32 - 1),
)
def test_invariants_any_setting(n, l, variant, num_blocks, seed):
    l = min(l, n)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        prompt, answer = generate_example(rng, n, l, variant, num_blocks)
        check_example(prompt, answer, n, l, variant, num_blocks)


def test_single_letter_blocks_use_every_letter():
    # n=1, l=1: the 25 distractors must be exactly the other letters, a stress test of rejection.
    assert blocks_for_length(1, 1, "first") == 26
    rng = np.random.default_rng(0)
    for _ in range(5):
        prompt, answer = generate_example(rng, 1, 1, "first", 26)
        blocks, _, _ = check_example(prompt, answer, 1, 1, "first", 26)
        assert set(blocks) == LETTERS


def test_target_position_and_query_are_random():
    rng = np.random.default_rng(1)
    positions, query_orders, query_at_front = [], set(), []
    for _ in range(1000):
        prompt, answer = generate_example(rng, 5, 2, "all", 5)
        blocks, query, target = check_example(prompt, answer, 5, 2, "all", 5)
        positions.append(blocks.index(target))
        query_orders.add(target.index(query[0]) < target.index(query[1]))
        query_at_front.append(target.startswith(query) or target.startswith(query[::-1]))
    counts = np.bincount(positions, minlength=5)
    assert counts.min() > 150, counts  # expected 200 each
    assert query_orders == {True, False}
    # Query letters are a random pair of the 5: at the front 1 time in 10.
    assert 0.05 < np.mean(query_at_front) < 0.15


def test_blocks_for_length_is_the_maximum():
    for n, l, variant, length in [(5, 2, "all", 319), (8, 2, "last", 319), (5, 2, "first", 38)]:
        b = blocks_for_length(n, l, variant, length)
        answer_len = n if variant == "all" else 1
        assert b * (n + 1) + l + answer_len <= length < (b + 1) * (n + 1) + l + answer_len
    # The CPU-scale setting of the spec: 5 blocks, 38 tokens with BOS.
    prompt, answer = generate_example(np.random.default_rng(0), 5, 2, "all", 5)
    assert len(encode_example(prompt, answer)["tokens"]) == 38


def test_determinism_by_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [generate_example(rng, 5, 2, "last", 10) for _ in range(50)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


@pytest.mark.parametrize("variant", block_task.VARIANTS)
def test_encode_example_mask_covers_answer(variant):
    rng = np.random.default_rng(2)
    for _ in range(20):
        prompt, answer = generate_example(rng, 5, 2, variant, 7)
        example = encode_example(prompt, answer)
        tokens, mask = example["tokens"], example["answer_mask"]
        assert tokens.dtype == np.int32 and mask.dtype == np.int32
        assert tokens.shape == mask.shape == (1 + len(prompt) + len(answer),)
        assert tokens[0] == tokenizer.BOS
        assert tokenizer.decode(tokens) == prompt + answer
        assert set(np.unique(mask)) <= {0, 1}
        assert tokenizer.decode(tokens[mask == 1]) == answer
        assert mask.sum() == len(answer) and mask[-len(answer) :].all()
        # With inputs = tokens[:-1], the weighted targets are exactly the answer.
        assert tokenizer.decode(tokens[1:][mask[1:] == 1]) == answer


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: blocks_for_length(0, 1, "all"), "n must be between 1 and 26"),
        (lambda: blocks_for_length(27, 1, "all"), "n must be between 1 and 26"),
        (lambda: blocks_for_length(5.0, 1, "all"), "n must be an integer"),
        (lambda: blocks_for_length(5, 0, "all"), "l must be between 1 and 5"),
        (lambda: blocks_for_length(5, 6, "all"), "l must be between 1 and 5"),
        (lambda: blocks_for_length(5, 2, "middle"), "variant must be one of"),
        (lambda: blocks_for_length(5, 2, "all", 18), "length=18 is too short"),
        (lambda: blocks_for_length(26, 1, "all"), "no possible distractor"),
        (lambda: generate_example(np.random.default_rng(), 5, 2, "all", 1), "num_blocks must"),
        (lambda: generate_example(np.random.default_rng(), 1, 1, "all", 27), "num_blocks=27"),
        (lambda: generate_example(np.random.default_rng(), 5, 2, "First", 5), "variant"),
        (lambda: block_task_config(5, 2, "all", num_blocks=60), "does not fit in length=319"),
        (lambda: block_task_config(5, 2, "all", num_train=0), "num_train must be >= 1"),
        (lambda: block_task_config(5, 2, "all", seed=-1), "seed must be >= 0"),
        (lambda: block_task_config(5, 2, "all", length=10), "length=10 is too short"),
    ],
)
def test_invalid_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_config_names():
    defaults = dict(n=5, l=2, variant="all")
    changes = [
        {},
        {"n": 8},
        {"l": 3},
        {"variant": "last"},
        {"length": 500},
        {"num_blocks": 5},
        {"num_blocks": 6},
        {"num_train": 20_000},
        {"num_validation": 500},
        {"num_test": 500},
        {"seed": 3},
        {"num_blocks": 5, "seed": 3},
    ]
    configs = [block_task_config(**{**defaults, **change}) for change in changes]
    assert len({config.name for config in configs}) == len(configs)
    for change, config in zip(changes, configs, strict=True):
        for key, value in {**defaults, **change}.items():
            assert getattr(config, key) == value
        assert block_task_config(**{**defaults, **change}).name == config.name

    builder_cls = tfds_block_task.MtaBlockTask
    names = {config.name for config in builder_cls.BUILDER_CONFIGS}
    assert names == {f"n{n}_l2_{v}" for n in (5, 8) for v in block_task.VARIANTS}
    for predefined in builder_cls.BUILDER_CONFIGS:
        made = block_task_config(predefined.n, predefined.l, predefined.variant)
        assert made is predefined and made.name == predefined.name
        assert (made.length, made.num_blocks, made.num_train, made.seed) == (319, None, 100_000, 0)
        assert (made.num_validation, made.num_test) == (1000, 1000)


def test_config_is_immutable_and_name_checked():
    config = block_task_config(5, 2, "all")
    with pytest.raises(AttributeError):
        config.n = 8
    with pytest.raises(ValueError, match="name must be"):
        tfds_block_task.BlockTaskConfig(name="n5_l2_all", n=8)


def test_builder_is_registered():
    import tensorflow_datasets as tfds

    assert tfds.builder_cls("mta_block_task") is tfds_block_task.MtaBlockTask


def read_split(builder, split):
    return [
        builder.as_data_source()[split][i] for i in range(builder.info.splits[split].num_examples)
    ]


def test_tfds_build_and_read(tmp_path, monkeypatch):
    config = block_task_config(
        5, 2, "all", num_blocks=5, num_train=200, num_validation=20, num_test=20
    )
    builder = prepare_block_task(config, str(tmp_path))
    sources = builder.as_data_source()
    assert {split: len(source) for split, source in sources.items()} == {
        "train": 200,
        "validation": 20,
        "test": 20,
    }
    records = {split: read_split(builder, split) for split in tfds_block_task.SPLITS}
    for split_records in records.values():
        for record in split_records:
            prompt, answer = record["prompt"].decode(), record["answer"].decode()
            check_example(prompt, answer, 5, 2, "all", 5)
            expected = encode_example(prompt, answer)
            assert record["tokens"].dtype == np.int32
            np.testing.assert_array_equal(record["tokens"], expected["tokens"])
            np.testing.assert_array_equal(record["answer_mask"], expected["answer_mask"])

    # A second call must reuse the build: generating anything now would fail.
    def fail(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(block_task, "generate_example", fail)
    again = prepare_block_task(config, str(tmp_path))
    for split in tfds_block_task.SPLITS:
        assert [r["prompt"] for r in read_split(again, split)] == [
            r["prompt"] for r in records[split]
        ]


def test_tfds_splits_disjoint_and_unique(tmp_path):
    # Only 26 * 25 * 2 = 1300 distinct prompts exist, so without rejection repeats are certain.
    config = block_task_config(
        1, 1, "first", num_blocks=2, num_train=400, num_validation=60, num_test=60
    )
    builder = prepare_block_task(config, str(tmp_path))
    prompts = {
        split: [record["prompt"] for record in read_split(builder, split)]
        for split in tfds_block_task.SPLITS
    }
    for split, split_prompts in prompts.items():
        assert len(set(split_prompts)) == len(split_prompts), split
    for a, b in itertools.combinations(tfds_block_task.SPLITS, 2):
        assert not set(prompts[a]) & set(prompts[b]), (a, b)


def test_tfds_build_is_deterministic(tmp_path):
    def test_prompts(seed, subdir):
        config = block_task_config(
            5, 2, "last", num_blocks=4, num_train=30, num_validation=10, num_test=10, seed=seed
        )
        builder = prepare_block_task(config, str(tmp_path / subdir))
        return sorted(record["prompt"] for record in read_split(builder, "test"))

    assert test_prompts(0, "a") == test_prompts(0, "b")
    assert test_prompts(0, "a") != test_prompts(1, "c")


def test_impossible_split_sizes_raise():
    config = block_task_config(1, 1, "first", num_blocks=2, num_train=1400)
    with pytest.raises(ValueError, match="unique train examples"):
        list(tfds_block_task._unique_examples(config, "train", set()))

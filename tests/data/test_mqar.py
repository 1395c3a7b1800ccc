"""Tests for the multi-query associative recall generator and its TFDS builder."""

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.data import mqar, tfds_common, tfds_mqar, tokenizer
from mta.data.mqar import generate_example
from mta.data.tfds_mqar import mqar_config, prepare_mqar


def check_example(example, num_pairs, key_len, value_len, length):
    """Re-parses the prompt and checks every invariant; returns the query slot indices."""
    prompt, answer = example["prompt"], example["answer"]
    size = key_len + value_len + 2
    assert len(prompt) <= length < len(prompt) + size
    assert (len(prompt) + 1) % size == 0
    words = prompt.split(" ")
    assert len(words) == 2 * (len(prompt) + 1) // size
    pairs = dict(zip(words[0 : 2 * num_pairs : 2], words[1 : 2 * num_pairs : 2], strict=True))
    assert len(pairs) == num_pairs, "keys must be distinct"
    for key, value in pairs.items():
        assert len(key) == key_len and key.isalpha() and key.islower()
        assert len(value) == value_len and value.isdigit()

    slots = list(zip(words[2 * num_pairs :: 2], words[2 * num_pairs + 1 :: 2], strict=True))
    queries, expected_mask = [], np.zeros(len(prompt) + 1, np.int32)
    for s, (first, second) in enumerate(slots):
        if first in pairs:
            assert second == pairs[first], "a query's answer is the value paired with its key"
            queries.append(s)
            start = 1 + (num_pairs + s) * size + key_len + 1
            expected_mask[start : start + value_len] = 1
        else:
            assert len(first) == key_len and first.isalpha() and first.islower()
            assert len(second) == value_len and second.isalpha() and second.islower()
            assert second not in pairs
    queried = [slots[s][0] for s in queries]
    assert sorted(queried) == sorted(pairs), "every key is queried exactly once"
    assert answer == " ".join(pairs[key] for key in queried)

    tokens, mask = example["tokens"], example["answer_mask"]
    assert tokens.dtype == mask.dtype == np.int32
    assert tokens[0] == tokenizer.BOS and tokenizer.decode(tokens) == prompt
    np.testing.assert_array_equal(mask, expected_mask)
    assert tokenizer.decode(tokens[mask == 1]) == answer.replace(" ", "")
    order = list(pairs)
    distances = [(num_pairs + s - order.index(slots[s][0])) * size for s in queries]
    np.testing.assert_array_equal(example["distances"], distances)
    return queries, len(slots)


@settings(max_examples=40, deadline=None)
@given(
    num_pairs=st.integers(1, 40),
    key_len=st.integers(1, 5),
    value_len=st.integers(1, 5),
    extra=st.integers(0, 400),
    alpha=st.sampled_from([0.01, 0.5, 1.0, 2.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_invariants_any_setting(num_pairs, key_len, value_len, extra, alpha, seed):
    num_pairs = min(num_pairs, 26**key_len // 2)
    length = 2 * num_pairs * (key_len + value_len + 2) - 1 + extra
    rng = np.random.default_rng(seed)
    for _ in range(3):
        example = generate_example(rng, num_pairs, key_len, value_len, length, alpha)
        check_example(example, num_pairs, key_len, value_len, length)


@pytest.mark.parametrize("length", [1024, 4096, 16384])
def test_long_examples(length):
    rng = np.random.default_rng(length)
    for _ in range(5):
        example = generate_example(rng, length // 64, 4, 4, length)
        check_example(example, length // 64, 4, 4, length)


def test_query_gaps_follow_the_power_law():
    def gaps(alpha):
        rng = np.random.default_rng(0)
        found = []
        for _ in range(300):
            queries, slots = check_example(generate_example(rng, 4, 3, 3, 800, alpha), 4, 3, 3, 800)
            found += [q / slots for q in queries]
        return np.array(found)

    heavy, uniform = gaps(0.01), gaps(1.0)
    # p(g) ~ 1/(g+1) over 96 slots puts about half of the 4 queries in the first tenth (53% with
    # this seed), uniform gaps a tenth.
    assert 0.45 < np.mean(heavy < 0.1) < 0.65
    assert 0.07 < np.mean(uniform < 0.1) < 0.15
    assert 0.45 < uniform.mean() < 0.55


def test_determinism_by_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [generate_example(rng, 8, 3, 3, 300)["prompt"] for _ in range(20)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_pairs": 0}, "num_pairs must be >= 1"),
        ({"key_len": 0}, "key_len must be between 1 and 8"),
        ({"value_len": 17}, "value_len must be between 1 and 16"),
        ({"num_pairs": 14, "key_len": 1}, "num_pairs=14 is too many for key_len=1"),
        ({"length": 100}, "length=100 is too short for 16 pairs"),
        ({"alpha": 0}, "alpha must be a number > 0"),
        ({"alpha": "1"}, "alpha must be a number > 0"),
        ({"num_test": 0}, "num_test must be >= 1"),
        ({"seed": 1.5}, "seed must be an integer"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mqar_config(**kwargs)
    generator_kwargs = {k: v for k, v in kwargs.items() if k not in ("num_test", "seed")}
    if generator_kwargs:
        params = {"num_pairs": 16, "key_len": 3, "value_len": 3, "length": 1024, **generator_kwargs}
        with pytest.raises(ValueError, match=match):
            generate_example(np.random.default_rng(0), **params)


def test_config_names():
    changes = [
        {},
        {"num_pairs": 8},
        {"key_len": 4},
        {"value_len": 4},
        {"length": 2048},
        {"alpha": 0.5},
        {"num_train": 5},
        {"num_validation": 5},
        {"num_test": 5},
        {"seed": 1},
    ]
    configs = [mqar_config(**change) for change in changes]
    assert len({config.name for config in configs}) == len(configs)
    assert configs[0].name == "p16_k3_v3_len1024"
    assert configs[5].name == "p16_k3_v3_len1024_a0.5"
    assert mqar_config() is tfds_mqar.MtaMqar.BUILDER_CONFIGS[0]
    assert tfds.builder_cls("mta_mqar") is tfds_mqar.MtaMqar
    for change, config in zip(changes, configs, strict=True):
        for key, value in change.items():
            assert getattr(config, key) == value
    with pytest.raises(AttributeError):
        configs[0].alpha = 1.0


def read_split(builder, split):
    source = builder.as_data_source()[split]
    return [source[i] for i in range(len(source))]


def test_tfds_build_and_read(tmp_path):
    config = mqar_config(8, 3, 2, 200, num_train=60, num_validation=10, num_test=10)
    builder = prepare_mqar(config, str(tmp_path))
    records = {split: read_split(builder, split) for split in tfds_common.SPLITS}
    assert {split: len(r) for split, r in records.items()} == {
        "train": 60,
        "validation": 10,
        "test": 10,
    }
    for split_records in records.values():
        for record in split_records:
            example = {**record, "prompt": record["prompt"].decode()}
            example["answer"] = record["answer"].decode()
            check_example(example, 8, 3, 2, 200)
    prompts = {
        split: {r["prompt"] for r in split_records} for split, split_records in records.items()
    }
    for a, b in itertools.combinations(tfds_common.SPLITS, 2):
        assert not prompts[a] & prompts[b]
    # The test split is drawn from its own seed stream (TFDS stores records in a shuffled order).
    rng = tfds_common.split_rng(0, "test")
    drawn = [generate_example(rng, 8, 3, 2, 200, mqar.DEFAULT_ALPHA)["prompt"] for _ in range(10)]
    assert {prompt.encode() for prompt in drawn} == prompts["test"]


def test_eval_cells_of_other_key_lengths_are_told_apart():
    from mta.data.tasks.mqar import MqarSpec

    specs = [MqarSpec(key_len=n, value_len=n, lengths=(128,)) for n in (1, 2)]
    coords = [tuple(sorted(cell.coords.items())) for spec in specs for cell in spec.cells()]
    assert len(set(coords)) == 2  # results.json rows of the two are distinguishable

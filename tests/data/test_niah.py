"""Tests for the multi-needle needle-in-a-haystack generator and its TFDS builder."""

import itertools
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mta.data import niah, text_corpus, tfds_common, tfds_niah, tokenizer
from mta.data.niah import generate_example
from mta.data.tfds_niah import niah_config, prepare_niah

NEEDLE = re.compile(r"The special magic number for ([a-z]+-[a-z]+) is: (\d+)\.")
QUESTION = re.compile(
    r"\nWhat (?:is|are) the special magic numbers? for (.+)\? "
    r"The special magic numbers? for \1 (?:is|are): $"
)


def split_and(text):
    """Inverse of niah.join_and."""
    head, _, last = text.rpartition(" and ")
    return head.split(", ") + [last] if head else [last]


def check_example(example, num_needles, num_asked, length, depths, haystack, num_distractors=0):
    """Re-parses the prompt and checks every invariant of the example."""
    prompt, answer = example["prompt"], example["answer"]
    assert len(prompt) + len(answer) == length and prompt.isascii()
    question = QUESTION.search(prompt)
    assert question, prompt[-300:]
    text = prompt[: question.start()]
    found = [(m.start(), m.group(0), m.group(1), m.group(2)) for m in NEEDLE.finditer(text)]
    assert len(found) == num_needles + num_distractors
    pairs = {key: value for _, _, key, value in found}
    assert len(pairs) == len(found), "keys must be distinct"
    assert all(len(value) == 7 and value[0] != "0" for value in pairs.values())
    assert len(set(pairs.values())) == len(pairs), "values must be distinct"

    # Each asked needle's value is recoverable from its key, and the answer lists them in order.
    asked = split_and(question.group(1))
    assert len(asked) == len(set(asked)) == num_asked
    assert answer == niah.join_and([pairs[key] for key in asked])

    # The needle features: keys and values in haystack order, `asked` indexes them.
    keys, values = example["needle_keys"], example["needle_values"]
    assert len(keys) == len(values) == num_needles
    assert [keys[i] for i in example["asked"]] == asked
    assert all(pairs[key] == value for key, value in zip(keys, values, strict=True))
    starts = [text.index(niah.needle(key, value)) for key, value in zip(keys, values, strict=True)]
    assert starts == sorted(starts)
    np.testing.assert_allclose(example["needle_depths"], np.array(starts) / len(text) * 100, 1e-5)
    distractors = set(pairs) - set(keys)
    assert len(distractors) == num_distractors and not distractors & set(asked)

    # Without its needles the haystack is exactly filler, and needle j sits at the last sentence
    # boundary at or before d + j * (100 - d) / N percent of it.
    depth = example["depth"]
    assert depth in depths
    sentences = (
        text_corpus.prose_sentences() if haystack == "text" else text_corpus.noise_sentences()
    )
    longest = max(len(sentence) for sentence in sentences)
    budget = len(text) - sum(len(f[1]) + 1 for f in found)
    filler, removed, previous = [], 0, 0
    for start, sentence, key, _ in found:
        filler.append(text[previous:start])
        if key in keys:
            j = keys.index(key)
            target = (depth + j * (100 - depth) / num_needles) / 100 * budget
            assert target - longest - 2 <= start - removed <= target + 1
        removed += len(sentence) + 1
        previous = start + len(sentence) + 1
    filler.append(text[previous:])
    filler_text = "".join(filler)
    if haystack == "text":
        corpus = " ".join(text_corpus.prose_sentences())
        assert filler_text.strip() in corpus + " " + corpus
    else:
        stream = " ".join(text_corpus.noise_sentences() * (len(filler_text) // 80 + 2))
        assert stream.startswith(filler_text.rstrip(" "))
    assert "magic" not in filler_text

    tokens, mask = example["tokens"], example["answer_mask"]
    assert tokens.shape == mask.shape == (length + 1,)
    assert tokenizer.decode(tokens) == prompt + answer
    assert tokenizer.decode(tokens[mask == 1]) == answer and mask[-len(answer) :].all()


def encoded(example):
    from mta.data.block_task import encode_example

    return {**example, **encode_example(example["prompt"], example["answer"])}


SETTINGS = [
    # num_needles, num_asked, length, depths, haystack, num_distractors
    (1, 1, 500, (50,), "noise", 0),
    (2, 2, 2048, (0, 25, 50, 75, 100), "noise", 0),
    (4, 2, 4096, (0, 100), "text", 0),
    (6, 6, 4096, (10, 90), "text", 0),
    (3, 1, 3000, (30,), "distractors", 5),
    (2, 1, 16384, (0, 25, 50, 75, 100), "text", 0),
]


@pytest.mark.parametrize("setting", SETTINGS)
def test_invariants(setting):
    rng = np.random.default_rng(sum(setting[:3]))
    for _ in range(15):
        check_example(encoded(generate_example(rng, *setting)), *setting)


def test_keys_are_distinct_words():
    assert len(set(niah.KEYS)) == len(niah.KEYS) == 1368
    assert all(re.fullmatch(r"[a-z]+-[a-z]+", key) for key in niah.KEYS)


def test_needles_fill_the_shortest_length():
    length = niah.min_length(3, 2, 1)
    rng = np.random.default_rng(0)
    for _ in range(10):
        example = generate_example(rng, 3, 2, length, (50,), "distractors", 1)
        assert len(example["prompt"]) + len(example["answer"]) == length


def test_depths_are_spread_and_placed():
    rng = np.random.default_rng(1)
    drawn, first = [], {}
    for _ in range(200):
        example = generate_example(rng, 2, 1, 2000, (0, 50, 100), "noise")
        drawn.append(example["depth"])
        first.setdefault(example["depth"], []).append(example["needle_depths"][0])
    assert set(drawn) == {0, 50, 100} and min(np.bincount(drawn)[[0, 50, 100]]) > 40
    # Sentence boundaries in noise are at most ~22 bytes apart: about 1% of 2000.
    assert max(first[0]) < 0.1
    assert all(46 < d <= 50 for d in first[50])
    assert all(93 < d <= 100 for d in first[100])


def test_determinism_by_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [generate_example(rng, 2, 2, 1000, haystack="text")["prompt"] for _ in range(10)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_needles": 0}, "num_needles must be >= 1"),
        ({"num_asked": 3}, "num_asked must be between 1 and 2"),
        ({"length": 100}, "length=100 is too short for 2 needles, 1 asked"),
        ({"depths": (0, 101)}, "each depth must be between 0 and 100"),
        ({"depths": ()}, "depths must be a non-empty tuple"),
        ({"haystack": "book"}, "haystack must be one of"),
        ({"haystack": "distractors"}, "needs num_distractors >= 1"),
        ({"num_distractors": 2}, "num_distractors must be 0 unless"),
        ({"num_needles": 2000, "num_asked": 1, "length": 10**6}, "must be <= 1368"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        niah_config(**kwargs)
    params = {"num_needles": 2, "num_asked": 1, "length": 2048, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_example(np.random.default_rng(0), **params)


def test_config_names():
    changes = [
        {},
        {"num_needles": 3},
        {"num_asked": 2},
        {"length": 4096},
        {"depths": 50},
        {"depths": [0, 50]},
        {"haystack": "text"},
        {"haystack": "distractors", "num_distractors": 4},
        {"num_train": 5},
        {"seed": 1},
    ]
    configs = [niah_config(**change) for change in changes]
    assert len({config.name for config in configs}) == len(configs)
    assert configs[0].name == "n2_r1_len2048_noise"
    assert configs[4].name == "n2_r1_len2048_noise_d50" and configs[4].depths == (50,)
    assert configs[5].depths == (0, 50)
    assert configs[7].name == "n2_r1_len2048_distractors_x4"
    predefined = tfds_niah.MtaNiah.BUILDER_CONFIGS
    assert niah_config(4, 4, 4096, haystack="text") in predefined
    assert tfds.builder_cls("mta_niah") is tfds_niah.MtaNiah


def read_split(builder, split):
    source = builder.as_data_source()[split]
    return [source[i] for i in range(len(source))]


def test_tfds_build_and_read(tmp_path):
    setting = (3, 2, 1200, (0, 50, 100), "distractors", 2)
    config = niah_config(*setting, num_train=40, num_validation=8, num_test=8)
    builder = prepare_niah(config, str(tmp_path))
    records = {split: read_split(builder, split) for split in tfds_common.SPLITS}
    assert [len(records[split]) for split in tfds_common.SPLITS] == [40, 8, 8]
    for record in itertools.chain(*records.values()):
        example = {
            **record,
            "prompt": record["prompt"].decode(),
            "answer": record["answer"].decode(),
            "needle_keys": [key.decode() for key in record["needle_keys"]],
            "needle_values": [value.decode() for value in record["needle_values"]],
        }
        assert isinstance(record["depth"], int | np.integer) and record["asked"].dtype == np.int32
        check_example(example, *setting)
    prompts = [record["prompt"] for record in itertools.chain(*records.values())]
    assert len(set(prompts)) == len(prompts)

"""Tests for the variable tracking generator and its TFDS builder."""

import itertools
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mta.data import text_corpus, tfds_common, tfds_vartrack, tokenizer, vartrack
from mta.data.block_task import encode_example
from mta.data.tfds_vartrack import prepare_vartrack, vartrack_config
from mta.data.vartrack import generate_example

STATEMENT = re.compile(r"VAR ([A-Z]{5}) = (?:(\d{5})|VAR ([A-Z]{5}))\.")
QUESTION = re.compile(
    r"\nQuestion: Find all variables that are assigned the value (\d{5}) in the text above\. "
    r"Answer: According to the chain\(s\) of variable assignment in the text above, (\d+) "
    r"variables are assigned the value \1, they are: $"
)


def check_example(prompt, answer, num_chains, num_hops, length, haystack):
    """Replays the assignments of the prompt and checks every invariant; returns the chain ids
    of the statements in text order."""
    assert len(prompt) + len(answer) == length and prompt.isascii()
    assert prompt.startswith(vartrack.INTRO)
    question = QUESTION.search(prompt)
    assert question
    text = prompt[len(vartrack.INTRO) : question.start()]

    values, chain_of, order = {}, {}, []
    for match in STATEMENT.finditer(text):
        name, number, source = match.groups()
        assert name not in values, "every variable is assigned once"
        if number:
            assert number not in values.values(), "chains have distinct values"
            values[name], chain_of[name] = number, len(set(chain_of.values()))
        else:
            assert source in values, "a variable is copied only after its assignment"
            values[name], chain_of[name] = values[source], chain_of[source]
        order.append(name)
    assert len(order) == num_chains * (num_hops + 1)
    assert len(set(values.values())) == num_chains

    value, count = question.groups()
    holders = [name for name in order if values[name] == value]
    assert answer == " ".join(holders), "the answer names every holder in assignment order"
    assert int(count) == len(holders) == num_hops + 1

    # Without its statements (and their separators) the text is exactly the filler.
    filler, previous = [], 0
    for match in STATEMENT.finditer(text):
        filler.append(text[previous : match.start()])
        previous = match.end() + 1
    filler = "".join(filler) + text[previous:]
    if haystack == "noise":
        stream = " ".join(text_corpus.noise_sentences() * (len(filler) // 80 + 2))
        assert stream.startswith(filler.strip())
    else:
        corpus = " ".join(text_corpus.prose_sentences())
        assert filler.strip() in corpus + " " + corpus
    return [chain_of[name] for name in order]


SETTINGS = [
    (1, 1, 400, "noise"),
    (1, 4, 4096, "noise"),
    (3, 2, 2048, "text"),
    (4, 8, 16384, "noise"),
    (2, 4, 4096, "text"),
]


@pytest.mark.parametrize("setting", SETTINGS)
def test_invariants(setting):
    rng = np.random.default_rng(setting[2])
    for _ in range(15):
        prompt, answer = generate_example(rng, *setting)
        check_example(prompt, answer, *setting)


def test_chains_interleave_and_queries_vary():
    rng = np.random.default_rng(0)
    interleaved, asked = 0, set()
    for _ in range(100):
        prompt, answer = generate_example(rng, 2, 3, 1500)
        chains = check_example(prompt, answer, 2, 3, 1500, "noise")
        interleaved += chains != sorted(chains)
        asked.add(chains[[m.group(1) for m in STATEMENT.finditer(prompt)].index(answer[:5])])
    # Both chains contiguous happens with probability 2 / C(8, 4) = 1/35.
    assert interleaved > 85
    assert asked == {0, 1}


def test_shortest_length_and_encoding():
    length = vartrack.min_length(2, 3)
    rng = np.random.default_rng(1)
    prompt, answer = generate_example(rng, 2, 3, length)
    check_example(prompt, answer, 2, 3, length, "noise")
    example = encode_example(prompt, answer)
    assert example["tokens"].shape == (length + 1,) and example["tokens"][0] == tokenizer.BOS
    assert tokenizer.decode(example["tokens"][example["answer_mask"] == 1]) == answer


def test_determinism_by_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [generate_example(rng, 2, 2, 800, "text") for _ in range(10)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_chains": 0}, "num_chains must be between 1 and 1000"),
        ({"num_hops": 0}, "num_hops must be between 1 and 1000"),
        ({"length": 200}, "length=200 is too short for 1 chains of 4 hops"),
        ({"haystack": "distractors"}, "haystack must be one of"),
        ({"num_validation": -1}, "num_validation must be >= 1"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vartrack_config(**kwargs)
    params = {"num_chains": 1, "num_hops": 4, "length": 4096, **kwargs}
    if "num_validation" not in kwargs:
        with pytest.raises(ValueError, match=match):
            generate_example(np.random.default_rng(0), **params)


def test_config_names():
    changes = [{}, {"num_chains": 2}, {"num_hops": 2}, {"length": 1024}, {"haystack": "text"}]
    changes += [{"num_train": 7}, {"num_test": 7}, {"seed": 7}]
    configs = [vartrack_config(**change) for change in changes]
    assert len({config.name for config in configs}) == len(configs)
    assert configs[0].name == "c1_h4_len4096_noise"
    assert configs[-1].name == "c1_h4_len4096_noise_seed7"
    assert configs[0] is tfds_vartrack.MtaVartrack.BUILDER_CONFIGS[-1]
    assert tfds.builder_cls("mta_vartrack") is tfds_vartrack.MtaVartrack


def test_tfds_build_and_read(tmp_path):
    config = vartrack_config(2, 3, 1000, "text", num_train=30, num_validation=6, num_test=6)
    builder = prepare_vartrack(config, str(tmp_path))
    sources = builder.as_data_source()
    records = {split: [sources[split][i] for i in range(len(sources[split]))] for split in sources}
    assert [len(records[split]) for split in tfds_common.SPLITS] == [30, 6, 6]
    for record in itertools.chain(*records.values()):
        prompt, answer = record["prompt"].decode(), record["answer"].decode()
        check_example(prompt, answer, 2, 3, 1000, "text")
        assert tokenizer.decode(record["tokens"]) == prompt + answer
        assert tokenizer.decode(record["tokens"][record["answer_mask"] == 1]) == answer

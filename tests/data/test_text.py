"""Tests for local text (corpus reading, filler helpers) and the `mta_text` TFDS builder."""

import json
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.data import text_corpus, tfds_common, tokenizer
from mta.data.tfds_text import MtaText, encode_document, prepare_text, text_config


def read_split(builder, split):
    source = builder.as_data_source()[split]
    return [source[i] for i in range(len(source))]


def write_corpus(root, num_txt=6, jsonl_lines=("a", "b")):
    """A corpus dir: num_txt .txt files (one in a subdir, one not UTF-8) and a .jsonl file.

    Returns {source name: bytes} of the documents expected from it.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    expected = {}
    for i in range(num_txt):
        name = f"sub/doc{i}.txt" if i == 0 else f"doc{i}.txt"
        data = b"caf\xe9 \xff\xfe latin-1 bytes " + bytes([i]) if i == 1 else f"doc {i}\n".encode()
        (root / name).write_bytes(data)
        expected[name] = data
    lines = [json.dumps({"text": text}) for text in jsonl_lines]
    (root / "lines.jsonl").write_text("\n\n".join(lines) + "\n")
    for i, text in enumerate(jsonl_lines):
        expected[f"lines.jsonl:{2 * i + 1}"] = text.encode()
    (root / "ignored.md").write_text("not a document")
    return expected


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 100), budget=st.integers(0, 3000))
def test_fill_is_exact(start, budget):
    for sentences in (text_corpus.noise_sentences(), text_corpus.prose_sentences()):
        pieces = text_corpus.fill(sentences, start, budget)
        assert len(" ".join(pieces)) == budget and len(pieces) >= 1
        # Whole sentences in order from `start`, then the beginning of the next one.
        for k, piece in enumerate(pieces[:-1]):
            assert piece == sentences[(start + k) % len(sentences)]
        last = sentences[(start + len(pieces) - 1) % len(sentences)]
        assert last.startswith(pieces[-1])


def test_weave_and_gap_offsets():
    filler = ["Aa.", "Bbb.", "C"]
    assert text_corpus.gap_offsets(filler) == [0, 4, 9, 10]
    text = text_corpus.weave(filler, ["X.", "Y.", "Z."], [0, 2, 2])
    assert text == "X. Aa. Bbb. Y. Z. C"
    assert text_corpus.weave(filler, ["X."], [3]) == "Aa. Bbb. C X."
    assert text_corpus.weave([""], ["X.", "Y."], [0, 1]) == "X.  Y."
    with pytest.raises(ValueError, match="gaps must be non-decreasing"):
        text_corpus.weave(filler, ["X.", "Y."], [2, 1])
    with pytest.raises(ValueError, match="gaps must be non-decreasing"):
        text_corpus.weave(filler, ["X."], [4])


def test_prose_and_noise_sentences():
    noise = text_corpus.noise_sentences()
    assert noise[0] == "The grass is green." and len(noise) == 5
    assert " ".join(noise) == text_corpus.NOISE
    prose = text_corpus.prose_sentences()
    assert len(prose) > 500 and len(set(prose)) == len(prose)
    for sentence in prose:
        assert sentence.isascii() and not re.search(r"\d", sentence)
        assert 20 <= len(sentence) <= 300 and sentence[0].isupper() and sentence.endswith(".")


def test_bundled_documents():
    documents = text_corpus.bundled_documents()
    assert len(documents) > 50
    assert documents[-1][0] == "this" and b"Beautiful is better than ugly." in documents[-1][1]
    assert sum(len(data) for _, data in documents) > 200_000
    assert text_corpus.bundled_fingerprint() == text_corpus.bundled_fingerprint()


def test_read_corpus(tmp_path):
    expected = write_corpus(tmp_path / "corpus")
    (tmp_path / "corpus" / "empty.txt").write_bytes(b"")
    assert dict(text_corpus.read_corpus(tmp_path / "corpus")) == expected
    names = [name for name, _ in text_corpus.read_corpus(tmp_path / "corpus")]
    assert names == sorted(names, key=lambda n: n.split(":")[0])


def test_jsonl_bytes_round_trip(tmp_path):
    # Invalid UTF-8 inside a JSON line, a \u escape of a lone surrogate, and plain non-ASCII.
    (tmp_path / "a.jsonl").write_bytes(
        b'{"text": "raw \xff\xfe"}\n{"text": "esc \\ud800"}\n{"text": "caf\xc3\xa9"}\n'
    )
    documents = [data for _, data in text_corpus.read_corpus(tmp_path)]
    assert documents == [
        b"raw \xff\xfe",
        "esc \ud800".encode("utf-8", "surrogatepass"),
        b"caf\xc3\xa9",
    ]


@pytest.mark.parametrize(
    "content,match",
    [
        (b"not json\n", r"a.jsonl:1: not valid JSON"),
        (b'{"text": "ok"}\n{"txt": "x"}\n', r'a.jsonl:2: expected a JSON object with a "text"'),
        (b'["text"]\n', r'a.jsonl:1: expected a JSON object with a "text" string'),
        (b'{"text": 3}\n', r'a.jsonl:1: expected a JSON object with a "text" string'),
    ],
)
def test_bad_jsonl_lines(tmp_path, content, match):
    (tmp_path / "a.jsonl").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        list(text_corpus.read_corpus(tmp_path))


def test_bad_corpus_dirs(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.md").write_text("x")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_bytes(b"")
    cases = {
        "missing": "does not exist",
        "empty": "has no .txt or .jsonl file",
        "other": "has no .txt or .jsonl file",
        "blank": "has only empty files",
    }
    for name, reason in cases.items():
        path = str(tmp_path / name)
        for call in (text_config, lambda p: list(text_corpus.read_corpus(p))):
            with pytest.raises(ValueError) as error:
                call(path)
            message = str(error.value)
            assert "\n" not in message and path in message and reason in message
            assert "*.txt" in message and "*.jsonl" in message


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"validation_fraction": 0}, "validation_fraction must be strictly between 0 and 1"),
        ({"test_fraction": 1.5}, "test_fraction must be strictly between 0 and 1"),
        ({"test_fraction": "0.1"}, "test_fraction must be a number"),
        ({"validation_fraction": 0.5, "test_fraction": 0.5}, "must be < 1"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_invalid_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        text_config(**kwargs)


def test_config_names(tmp_path):
    write_corpus(tmp_path / "c")
    base = text_config(tmp_path / "c")
    assert re.fullmatch(r"dir-[0-9a-f]{8}", base.name)
    assert text_config(str(tmp_path / "c")).name == base.name
    assert text_config().name == f"bundled-{text_corpus.bundled_fingerprint()}"
    names = {
        base.name,
        text_config().name,
        text_config(tmp_path / "c", validation_fraction=0.1).name,
        text_config(tmp_path / "c", test_fraction=0.1).name,
        text_config(tmp_path / "c", seed=2).name,
    }
    assert len(names) == 5
    (tmp_path / "c" / "new.txt").write_bytes(b"another document")
    assert text_config(tmp_path / "c").name != base.name
    with pytest.raises(ValueError, match="name must be"):
        type(base)(name=base.name, manual_dir=str(tmp_path / "c"), seed=1)


def test_encode_document():
    record = encode_document(b"ab\xff")
    np.testing.assert_array_equal(record["tokens"], [tokenizer.BOS, 97, 98, 255, tokenizer.EOS])
    np.testing.assert_array_equal(record["answer_mask"], [0, 1, 1, 1, 1])
    assert record["tokens"].dtype == record["answer_mask"].dtype == np.int32


def test_tfds_build_user_corpus(tmp_path):
    expected = write_corpus(tmp_path / "c", num_txt=30)
    config = text_config(tmp_path / "c", validation_fraction=0.1, test_fraction=0.2)
    builder = prepare_text(config, str(tmp_path / "data"))
    records = {split: read_split(builder, split) for split in tfds_common.SPLITS}
    counts = {split: len(split_records) for split, split_records in records.items()}
    assert counts == {"train": 23, "validation": 3, "test": 6}  # of 32 documents
    seen = {}
    for split_records in records.values():
        for record in split_records:
            name = record["source"].decode()
            assert name not in seen
            tokens, mask = record["tokens"], record["answer_mask"]
            assert tokens[0] == tokenizer.BOS and tokens[-1] == tokenizer.EOS
            assert mask[0] == 0 and mask[1:].all() and mask.shape == tokens.shape
            seen[name] = tokenizer.decode_bytes(tokens)
    assert seen == expected

    # Determinism by seed: the same assignment again, another one with another seed.
    def test_names(seed, data_dir):
        config = text_config(tmp_path / "c", validation_fraction=0.1, test_fraction=0.2, seed=seed)
        builder = prepare_text(config, str(tmp_path / data_dir))
        return sorted(record["source"] for record in read_split(builder, "test"))

    assert test_names(0, "data0") == sorted(r["source"] for r in records["test"])
    assert test_names(1, "data1") != test_names(0, "data0")


def test_tfds_build_bundled(tmp_path):
    builder = prepare_text(text_config(), str(tmp_path))
    sizes = {split: len(source) for split, source in builder.as_data_source().items()}
    documents = text_corpus.bundled_documents()
    assert sizes["validation"] == sizes["test"] == round(0.05 * len(documents))
    assert sum(sizes.values()) == len(documents)
    assert tfds.builder_cls("mta_text") is MtaText


def test_too_few_documents(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_bytes(b"one")
    (tmp_path / "c" / "b.txt").write_bytes(b"two")
    with pytest.raises(ValueError, match="has 2 non-empty documents: too few"):
        prepare_text(text_config(tmp_path / "c"), str(tmp_path / "data"))

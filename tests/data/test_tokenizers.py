"""The tokenizer kinds (mta/data/tokenizers): round trips, special ids, tiktoken against the
tiktoken library, bad files, and the builders' use of them."""

import base64
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from mta.data import block_task, mqar, tfds_block_task, tfds_common, tokenizer
from mta.data.tokenizers import BYTE, TokenizerError, load_tokenizer, spec

TEXTS = [
    "",
    "hello world",
    "Grüße, naïve café — 日本語のテキスト 😀🎉",
    "def f(x):\n\treturn  x  +  1\r\n",
    "  leading and trailing  ",
    "<s></s><pad><|begin_of_text|> are plain text here",
]


def _load(kind, path):
    return load_tokenizer(SimpleNamespace(kind=kind, path=path))


@pytest.fixture(params=["unigram", "bpe", "hf", "tiktoken"])
def tok(request, tokenizer_files):
    return _load(*tokenizer_files[request.param])


def test_byte_tokenizer_is_todays_ids():
    assert (BYTE.vocab_size, BYTE.pad_id, BYTE.bos_id, BYTE.eos_id) == (259, 256, 257, 258)
    assert BYTE.fingerprint == "byte" and BYTE.kind == "byte" and _load("byte", "") is BYTE
    text = TEXTS[2]
    np.testing.assert_array_equal(BYTE.encode(text), tokenizer.encode(text))
    ids = BYTE.encode_with(text, bos=True, eos=True)
    np.testing.assert_array_equal(ids, tokenizer.encode(text, bos=True, eos=True))
    assert BYTE.decode(ids) == text and BYTE.decode_bytes([97, 0xFF, 258]) == b"a\xff"


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_without_specials(tok, text):
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ((ids >= 0) & (ids < tok.vocab_size)).all()
    assert not np.isin(ids, [tok.bos_id, tok.eos_id, tok.pad_id]).any()
    assert tok.decode(ids) == text
    with_specials = tok.encode_with(text, bos=True, eos=True)
    assert with_specials[0] == tok.bos_id and with_specials[-1] == tok.eos_id
    assert tok.decode(with_specials) == text
    assert tok.decode([*ids, tok.pad_id, tok.vocab_size + 5]) == text  # dropped


def test_special_ids_and_fingerprints(tokenizer_files):
    sp = _load(*tokenizer_files["unigram"])
    assert (sp.vocab_size, sp.bos_id, sp.eos_id, sp.pad_id) == (400, 1, 2, 3)
    hf = _load(*tokenizer_files["hf"])
    assert (hf.vocab_size, hf.pad_id, hf.bos_id, hf.eos_id) == (400, 0, 1, 2)
    tk = _load(*tokenizer_files["tiktoken"])
    ranks = tk.vocab_size - 256
    assert (tk.bos_id, tk.eos_id, tk.pad_id) == (ranks, ranks + 1, ranks + 4)
    prints = {_load(*f).fingerprint for f in tokenizer_files.values()}
    assert len(prints) == 4 and all(len(p) == 12 for p in prints)
    assert sp.fingerprint == _load(*tokenizer_files["unigram"]).fingerprint  # stable


def test_tiktoken_file_encodes_like_the_tiktoken_library(tokenizer_files, tmp_path):
    """A rank file `mta tokenizer train` wrote gives, through the project's tokenizer, the ids
    the tiktoken library computes from the same file with Llama-3's pattern and specials."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from mta.data.tokenizers.tiktoken_bpe import LLAMA3_PATTERN, SPECIAL_TOKENS

    path = tmp_path / "llama_like.tiktoken"
    shutil.copy(tokenizer_files["tiktoken"][1], path)
    ranks = load_tiktoken_bpe(str(path))
    reference = tiktoken.Encoding(
        name="reference",
        pat_str=LLAMA3_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={t: len(ranks) + i for i, t in enumerate(SPECIAL_TOKENS)},
    )
    ours = _load("tiktoken", str(path))
    text = "The quick brown fox's 12345 jumps—über 日本 😀\n\n  spaced\tout   "
    expected = reference.encode(text, allowed_special=set())
    assert len(expected) < len(text.encode())  # merges were applied
    np.testing.assert_array_equal(ours.encode(text), expected)
    assert ours.bos_id == reference.encode("<|begin_of_text|>", allowed_special="all")[0]
    assert ours.eos_id == reference.encode("<|end_of_text|>", allowed_special="all")[0]
    assert ours.vocab_size == reference.n_vocab


def test_hand_written_rank_file(tmp_path):
    """The 256 bytes plus merges "ab" and "abc": the ids tiktoken's ranks say."""
    tokens = [bytes([b]) for b in range(256)] + [b"ab", b"abc"]
    lines = [base64.b64encode(t) + b" %d" % i for i, t in enumerate(tokens)]
    path = tmp_path / "tiny.tiktoken"
    path.write_bytes(b"\n".join(lines) + b"\n")
    tok = _load("tiktoken", str(path))
    assert tok.encode("abc ab a").tolist() == [257, ord(" "), 256, ord(" "), ord("a")]
    assert tok.vocab_size == 258 + 256 and tok.bos_id == 258 and tok.eos_id == 259


@pytest.mark.parametrize("kind", ["sentencepiece", "tiktoken", "huggingface"])
def test_bad_files_name_the_file_and_what_is_expected(kind, tokenizer_files, tmp_path):
    with pytest.raises(TokenizerError, match=r"missing\.bin: tokenizer file not found; expected"):
        _load(kind, str(tmp_path / "missing.bin"))
    other = {"sentencepiece": "hf", "tiktoken": "unigram", "huggingface": "tiktoken"}[kind]
    path = tokenizer_files[other][1]
    with pytest.raises(TokenizerError, match=f"not a {kind} tokenizer .*; expected") as info:
        _load(kind, path)
    assert path in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(TokenizerError, match="not a file"):
        _load(kind, str(tmp_path))


def test_encode_marked_masks_exactly_the_marked_pieces(tok):
    tokens, mask = tok.encode_marked([("key ab ", False), ("42", True), (" key cd", False)])
    assert tokens[0] == tok.bos_id and mask[0] == 0 and tokens.shape == mask.shape
    assert tok.decode(tokens[mask == 1]) == "42" and tok.decode(tokens) == "key ab 42 key cd"


def test_task_examples_with_a_tokenizer_decode_to_prompt_and_answer(tok):
    rng = np.random.default_rng(0)
    prompt, answer = block_task.generate_example(rng, 5, 2, "all", 4)
    example = block_task.encode_example(prompt, answer, tok)
    tokens, mask = example["tokens"], example["answer_mask"]
    assert tok.decode(tokens) == prompt + answer and tok.decode(tokens[mask == 1]) == answer
    ex = mqar.generate_example(rng, 4, 2, 2, 64, tok=tok)
    assert ex["tokens"][0] == tok.bos_id
    assert tok.decode(ex["tokens"][ex["answer_mask"] == 1]) == ex["answer"].replace(" ", "")
    assert tok.decode(ex["tokens"]) == ex["prompt"]


def test_byte_mqar_and_build_names_are_unchanged(tokenizer_files):
    byte_ex = mqar.generate_example(np.random.default_rng(3), 4, 2, 2, 64)
    again = mqar.generate_example(np.random.default_rng(3), 4, 2, 2, 64, tok=BYTE)
    np.testing.assert_array_equal(byte_ex["tokens"], tokenizer.encode(byte_ex["prompt"], bos=True))
    np.testing.assert_array_equal(byte_ex["answer_mask"], again["answer_mask"])
    config = tfds_block_task.block_task_config(5, 2, "all", num_blocks=4)
    assert config.name == "n5_l2_all_b4" and config.tokenizer == "byte"
    kind, path = tokenizer_files["unigram"]
    tok = _load(kind, path)
    other = tfds_common.with_tokenizer(config, spec(SimpleNamespace(kind=kind, path=path)))
    assert other.name == f"n5_l2_all_b4_tok{tok.fingerprint}" and other.tok is tok

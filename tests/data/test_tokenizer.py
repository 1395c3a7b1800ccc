"""Tests for the byte-level tokenizer."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta.data import tokenizer
from mta.data.tokenizer import BOS, EOS, PAD, VOCAB_SIZE

SPECIALS = [PAD, BOS, EOS]


def test_special_token_ids_follow_the_bytes():
    assert sorted(SPECIALS) == [256, 257, 258]
    assert VOCAB_SIZE == 259


@given(st.binary())
def test_bytes_round_trip(data):
    ids = tokenizer.encode(data)
    assert ids.dtype == np.int32
    assert ids.shape == (len(data),)
    assert list(ids) == list(data)
    assert tokenizer.decode_bytes(ids) == data


@given(st.text())
def test_text_round_trip(text):
    ids = tokenizer.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(list(ids)) == text


@given(st.binary(), st.booleans(), st.booleans())
def test_bos_eos_placement(data, bos, eos):
    ids = tokenizer.encode(data, bos=bos, eos=eos)
    assert ids.dtype == np.int32
    assert len(ids) == len(data) + bos + eos
    if bos:
        assert ids[0] == BOS
    if eos:
        assert ids[-1] == EOS
    body = ids[int(bos) : len(ids) - int(eos)]
    np.testing.assert_array_equal(body, tokenizer.encode(data))
    # Specials appear only where requested.
    assert int(np.sum(ids >= 256)) == bos + eos


@given(st.data())
def test_special_tokens_dropped_in_decode(draw):
    text = draw.draw(st.text())
    ids = list(tokenizer.encode(text))
    for _ in range(draw.draw(st.integers(0, 10))):
        position = draw.draw(st.integers(0, len(ids)))
        ids.insert(position, draw.draw(st.sampled_from(SPECIALS)))
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode_bytes(np.array(ids)) == text.encode("utf-8")


def test_invalid_utf8_is_replaced():
    assert tokenizer.decode(tokenizer.encode(b"a\xffb")) == "a\ufffdb"


@pytest.mark.parametrize("bad", [-1, VOCAB_SIZE])
def test_out_of_range_ids_rejected(bad):
    with pytest.raises(ValueError, match="token ids"):
        tokenizer.decode([97, bad])

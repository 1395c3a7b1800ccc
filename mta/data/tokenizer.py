"""Byte-level tokenizer: token id == byte value for 0..255, plus three special tokens."""

from collections.abc import Iterable

import numpy as np

NUM_BYTES = 256
PAD = 256
BOS = 257
EOS = 258
VOCAB_SIZE = 259


def encode(text: str | bytes, bos: bool = False, eos: bool = False) -> np.ndarray:
    """Encodes text (utf-8 for `str`) into token ids.

    Returns an int32 array of shape [len(bytes) + bos + eos]: optional BOS, the byte values,
    optional EOS.
    """
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
    if bos or eos:
        ids = np.concatenate(
            [np.array([BOS] * bos, np.int32), ids, np.array([EOS] * eos, np.int32)]
        )
    return ids


def decode_bytes(ids: Iterable[int] | np.ndarray) -> bytes:
    """Decodes token ids (any integer array-like of shape [T]) to bytes, dropping special tokens."""
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
        raise ValueError(f"token ids must be in [0, {VOCAB_SIZE}), got {arr.min()}..{arr.max()}")
    return arr[arr < NUM_BYTES].astype(np.uint8).tobytes()


def decode(ids: Iterable[int] | np.ndarray) -> str:
    """Decodes token ids of shape [T] to a string (utf-8, errors="replace"), dropping specials."""
    return decode_bytes(ids).decode("utf-8", errors="replace")

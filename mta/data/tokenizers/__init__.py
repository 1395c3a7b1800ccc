"""Tokenizers from `data.tokenizer: {kind, path}`: `load_tokenizer(spec)` (byte-only stand-in).

Every tokenizer has `encode(text) -> int32 ids` (no special tokens), `decode(ids) -> str`,
`vocab_size`, `bos_id`, `eos_id`, `pad_id`, `kind` and `fingerprint` (a short stable hash of what
defines its ids; "byte" for the byte tokenizer).
"""

from collections.abc import Iterable

import numpy as np

from mta.data import tokenizer as byte_tokenizer


class ByteTokenizer:
    """Token id == byte value for 0..255, then PAD 256, BOS 257, EOS 258 (mta/data/tokenizer.py)."""

    kind = "byte"
    fingerprint = "byte"
    vocab_size = byte_tokenizer.VOCAB_SIZE
    pad_id, bos_id, eos_id = byte_tokenizer.PAD, byte_tokenizer.BOS, byte_tokenizer.EOS

    def encode(self, text: str) -> np.ndarray:
        return byte_tokenizer.encode(text)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        return byte_tokenizer.decode(ids)


def load_tokenizer(spec) -> ByteTokenizer:
    """The tokenizer of `spec` (an object or mapping with `kind` and `path`)."""
    kind = spec["kind"] if isinstance(spec, dict) else spec.kind
    if kind != "byte":
        raise ValueError(f"tokenizer kind {kind!r} is not available; allowed: byte")
    return ByteTokenizer()

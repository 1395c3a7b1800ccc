"""The byte tokenizer as a `Tokenizer`: ids 0..255 are the utf-8 bytes, then PAD 256, BOS 257,
EOS 258 (the functions of mta/data/tokenizer.py, which it wraps)."""

import dataclasses

import numpy as np

from mta.data import tokenizer
from mta.data.tokenizers.base import Tokenizer


@dataclasses.dataclass(frozen=True, eq=False)
class ByteTokenizer(Tokenizer):
    """Bytes plus PAD/BOS/EOS; `BYTE` is the one instance."""

    def _encode(self, text):
        return tokenizer.encode(text)

    def _decode(self, ids):
        return tokenizer.decode(ids)

    def decode_bytes(self, ids) -> bytes:
        arr = np.asarray(ids, np.int64).reshape(-1)
        return tokenizer.decode_bytes(arr[(arr >= 0) & (arr < tokenizer.NUM_BYTES)])


BYTE = ByteTokenizer(
    kind="byte",
    path="",
    vocab_size=tokenizer.VOCAB_SIZE,
    bos_id=tokenizer.BOS,
    eos_id=tokenizer.EOS,
    pad_id=tokenizer.PAD,
    fingerprint="byte",
)

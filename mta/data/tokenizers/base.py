"""What every tokenizer kind shares: the `Tokenizer` interface, its error and the file reading.

A tokenizer maps text to int32 ids and back; `bos_id`, `eos_id` and `pad_id` are ids of its own
vocabulary, and `fingerprint` names its file's contents (datasets and checkpoints record it).
"""

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

# What a file of each kind must be; every TokenizerError about a file ends with one of these.
EXPECTED = {
    "sentencepiece": "a SentencePiece model file (.model, a serialized ModelProto)",
    "tiktoken": "a tiktoken BPE rank file (lines '<base64 token> <rank>', like Llama-3's "
    "tokenizer.model)",
    "huggingface": "a Hugging Face tokenizers file (tokenizer.json)",
}


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used: one line naming the file and what is expected."""


def fingerprint(kind: str, data: bytes) -> str:
    """A short stable hash of a tokenizer: 12 hex digits of sha256(kind, NUL, file contents)."""
    return hashlib.sha256(kind.encode() + b"\0" + data).hexdigest()[:12]


def read_file(path: str, kind: str) -> bytes:
    """The bytes of tokenizer file `path`; TokenizerError (naming it and what a `kind` file is)
    if it is missing, not a file or unreadable."""
    file = Path(path).expanduser()
    if not file.exists():
        raise TokenizerError(f"{path}: tokenizer file not found; expected {EXPECTED[kind]}")
    if not file.is_file():
        raise TokenizerError(f"{path}: not a file; expected {EXPECTED[kind]}")
    try:
        return file.read_bytes()
    except OSError as err:
        raise TokenizerError(
            f"{path}: cannot read ({err.strerror}); expected {EXPECTED[kind]}"
        ) from None


def wrong_kind(path: str, kind: str, detail: str) -> TokenizerError:
    """The error for a readable file that is not a `kind` tokenizer."""
    detail = " ".join(str(detail).split())[:160]
    return TokenizerError(
        f"{path}: not a {kind} tokenizer ({detail}); expected {EXPECTED[kind]}"
        f" (or set data.tokenizer.kind to the file's kind)"
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """Base of the tokenizer kinds. Subclasses implement `_encode` and `_decode`.

    kind: byte | sentencepiece | tiktoken | huggingface; path: its file ("" for byte);
    vocab_size: ids are in [0, vocab_size); bos_id, eos_id, pad_id: special ids (pad is eos
    where the tokenizer has no pad: padded positions have weight 0, so any id would do);
    fingerprint: "byte", or `fingerprint(kind, file contents)`.
    """

    kind: str
    path: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    fingerprint: str

    def encode(self, text: str | bytes) -> np.ndarray:
        """int32 [n]: the ids of `text` (str, or utf-8 bytes), no special tokens."""
        if isinstance(text, bytes):
            text = text if self.kind == "byte" else text.decode("utf-8", errors="replace")
        return np.asarray(self._encode(text), np.int32).reshape(-1)

    def encode_with(self, text: str | bytes, bos: bool = False, eos: bool = False) -> np.ndarray:
        """int32 [bos + n + eos]: optional BOS, `encode(text)`, optional EOS."""
        ids = self.encode(text)
        bos_ids = np.full(int(bos), self.bos_id, np.int32)
        return np.concatenate([bos_ids, ids, np.full(int(eos), self.eos_id, np.int32)])

    def encode_marked(self, pieces: list[tuple[str, bool]]) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, mask), int32 [1 + n] each: BOS, then each (text, marked) piece encoded on
        its own; mask is 1 on the ids of the marked pieces (a task's answer), 0 elsewhere."""
        ids = [self.encode(text) for text, _ in pieces]
        marks = [np.full(len(i), int(m), np.int32) for i, (_, m) in zip(ids, pieces, strict=True)]
        tokens = np.concatenate([np.array([self.bos_id], np.int32), *ids])
        return tokens, np.concatenate([np.zeros(1, np.int32), *marks])

    def decode(self, ids) -> str:
        """The text of ids (any integer array-like [T]); special ids and ids outside the
        vocabulary (a model's vocabulary may be larger) are dropped; bad utf-8 is replaced."""
        arr = np.asarray(ids, np.int64).reshape(-1)
        arr = arr[(arr >= 0) & (arr < self.vocab_size)]
        specials = [self.bos_id, self.eos_id, self.pad_id]
        return self._decode([int(i) for i in arr[~np.isin(arr, specials)]])

    def decode_bytes(self, ids) -> bytes:
        """The utf-8 bytes of `decode(ids)` (the byte kind: the raw bytes, even invalid utf-8)."""
        return self.decode(ids).encode("utf-8", errors="surrogatepass")

    def record(self) -> dict:
        """{kind, path, fingerprint, vocab_size}: what a workdir records of its tokenizer."""
        return {
            "kind": self.kind,
            "path": self.path,
            "fingerprint": self.fingerprint,
            "vocab_size": self.vocab_size,
        }

    def describe(self) -> str:
        """One phrase naming it, e.g. "sentencepiece tokenizer sp.model (1000 ids)"."""
        where = f" {self.path}" if self.path else ""
        return f"{self.kind} tokenizer{where} ({self.vocab_size} ids)"

    def _encode(self, text: str) -> list[int] | np.ndarray:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

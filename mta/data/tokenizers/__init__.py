"""Tokenizers from local files: `data.tokenizer: {kind, path}` -> a `Tokenizer`.

    tok = load_tokenizer(cfg.data.tokenizer)      # any object with .kind and .path
    ids = tok.encode("héllo")                     # int32 [n], no special tokens
    tok.decode(ids) == "héllo"; tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size
    tok.fingerprint                               # "byte", or 12 hex digits of kind + file

Kinds: byte (the default: utf-8 bytes + PAD 256, BOS 257, EOS 258; `path` empty),
sentencepiece (a `.model` file), tiktoken (a BPE rank file such as Llama-3's tokenizer.model,
with Llama-3's split pattern and special tokens), huggingface (a `tokenizer.json`). Each is read
through its own library and nothing is downloaded. A file that is missing, unreadable or of
another kind raises TokenizerError (a ValueError), one line naming the file and what is
expected. Loaded tokenizers are cached per (kind, file, modification time, size).
`mta tokenizer train` (mta/data/tokenizers/train.py) makes such files from a corpus.
"""

import functools
import os
from pathlib import Path

from mta.data.tokenizers.base import EXPECTED, Tokenizer, TokenizerError
from mta.data.tokenizers.byte import BYTE

KINDS = ("byte", "sentencepiece", "tiktoken", "huggingface")

__all__ = ["BYTE", "KINDS", "Tokenizer", "TokenizerError", "load_tokenizer", "spec", "from_spec"]


def load_tokenizer(cfg) -> Tokenizer:
    """The tokenizer of a `TokenizerConfig` (or anything with `kind` and `path`);
    TokenizerError for an unknown kind, a byte kind with a path, a missing path, or a file that
    cannot be read as that kind."""
    kind, path = cfg.kind, cfg.path or ""
    if kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; allowed: {', '.join(KINDS)}")
    if kind == "byte":
        if path:
            raise TokenizerError(f"{path}: the byte tokenizer takes no file (set path to '')")
        return BYTE
    if not path:
        raise TokenizerError(f"a {kind} tokenizer needs a path: {EXPECTED[kind]}")
    try:
        stat = os.stat(Path(path).expanduser())
        key = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        key = None  # read_file reports it
    return _load(kind, path, key)


@functools.lru_cache(maxsize=16)
def _load(kind: str, path: str, key) -> Tokenizer:
    from mta.data.tokenizers import hf, spm, tiktoken_bpe
    from mta.data.tokenizers.base import read_file

    data = read_file(path, kind)
    loader = {"sentencepiece": spm.load, "tiktoken": tiktoken_bpe.load, "huggingface": hf.load}
    return loader[kind](path, data)


def spec(cfg) -> str:
    """The tokenizer of `cfg` in one string, as TFDS configs hold it: "byte", or
    "KIND:ABSOLUTE_PATH"."""
    if cfg.kind == "byte":
        return "byte"
    return f"{cfg.kind}:{Path(cfg.path).expanduser().absolute()}"


class _Spec:
    def __init__(self, text: str):
        self.kind, _, self.path = text.partition(":")


def from_spec(text: str) -> Tokenizer:
    """The tokenizer of a `spec` string."""
    return load_tokenizer(_Spec(text))

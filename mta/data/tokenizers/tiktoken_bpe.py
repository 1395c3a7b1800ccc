"""tiktoken BPE rank files (like Llama-3's `tokenizer.model`) through the tiktoken library.

The file holds the mergeable ranks, one `<base64 token> <rank>` line each; the split pattern and
the 256 special tokens are Llama-3's, appended after the ranks: with Llama-3's 128000 ranks,
`<|begin_of_text|>` is 128000, `<|end_of_text|>` 128001, `<|eot_id|>` 128009, and the vocabulary
has 128256 ids. Llama-3 has no padding token: pad is 128004 (`<|reserved_special_token_2|>`,
which Llama 3.1 renamed `<|finetune_right_pad_id|>`). Nothing is downloaded: the file is parsed
here, not through tiktoken's cached loader.
"""

import base64
import binascii
import dataclasses

from mta.data.tokenizers.base import Tokenizer, fingerprint, wrong_kind

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL = 256
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, NUM_SPECIAL - 5)]
BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_2|>"


@dataclasses.dataclass(frozen=True, eq=False)
class TiktokenTokenizer(Tokenizer):
    """A tiktoken Encoding of the file's ranks with Llama-3's pattern and special tokens."""

    encoding: object = None

    def _encode(self, text):
        return self.encoding.encode_ordinary(text)  # special-token strings are plain text

    def _decode(self, ids):
        return self.encoding.decode([i for i in ids if i < self.encoding.n_vocab - NUM_SPECIAL])


def parse_ranks(path: str, data: bytes) -> dict[bytes, int]:
    """{token bytes: rank} of a rank file; TokenizerError naming the first bad line."""
    ranks = {}
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("not two fields")
            ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
        except (ValueError, binascii.Error):
            shown = line[:40].decode("utf-8", "replace")
            raise wrong_kind(path, "tiktoken", f"line {number} is {shown!r}") from None
    if not ranks:
        raise wrong_kind(path, "tiktoken", "no ranks")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise wrong_kind(path, "tiktoken", "the ranks are not 0..n-1, each once")
    return ranks


def load(path: str, data: bytes) -> TiktokenTokenizer:
    """The tokenizer of a rank file's bytes; TokenizerError if they are no rank file."""
    import tiktoken

    ranks = parse_ranks(path, data)
    specials = {token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}
    try:
        encoding = tiktoken.Encoding(
            name=f"mta-{fingerprint('tiktoken', data)}",
            pat_str=LLAMA3_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=specials,
        )
    except Exception as err:  # tiktoken's core raises plain exceptions for bad ranks
        raise wrong_kind(path, "tiktoken", err) from None
    return TiktokenTokenizer(
        kind="tiktoken",
        path=path,
        vocab_size=len(ranks) + NUM_SPECIAL,
        bos_id=specials[BOS],
        eos_id=specials[EOS],
        pad_id=specials[PAD],
        fingerprint=fingerprint("tiktoken", data),
        encoding=encoding,
    )

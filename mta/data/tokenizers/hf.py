"""Hugging Face `tokenizer.json` files through the tokenizers library.

BOS, EOS and pad are the first of these tokens the vocabulary has (a tokenizer with no BOS uses
its EOS, one with no pad its EOS too; one with none of the EOS names is refused).
"""

import dataclasses

from mta.data.tokenizers.base import Tokenizer, fingerprint, wrong_kind

BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "[BOS]", "<|bos|>", "<|startoftext|>")
EOS_NAMES = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", "[EOS]", "<|eos|>", "[SEP]")
PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")


@dataclasses.dataclass(frozen=True, eq=False)
class HuggingFaceTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer`, encoding without its post-processor's special tokens."""

    tokenizer: object = None

    def _encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _first(tokenizer, names) -> int | None:
    ids = [tokenizer.token_to_id(name) for name in names]
    return next((i for i in ids if i is not None), None)


def load(path: str, data: bytes) -> HuggingFaceTokenizer:
    """The tokenizer of a tokenizer.json's bytes; TokenizerError if they are none or it has no
    end-of-text token."""
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tokenizer = HFTokenizer.from_str(data.decode("utf-8"))
    except Exception as err:  # UnicodeDecodeError, or the library's Exception for bad JSON
        raise wrong_kind(path, "huggingface", err) from None
    tokenizer.encode_special_tokens = True  # special-token strings in text are plain text
    eos = _first(tokenizer, EOS_NAMES)
    if eos is None:
        names = ", ".join(EOS_NAMES)
        raise wrong_kind(path, "huggingface", f"no end-of-text token, one of {names}")
    bos, pad = _first(tokenizer, BOS_NAMES), _first(tokenizer, PAD_NAMES)
    return HuggingFaceTokenizer(
        kind="huggingface",
        path=path,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        bos_id=eos if bos is None else bos,
        eos_id=eos,
        pad_id=eos if pad is None else pad,
        fingerprint=fingerprint("huggingface", data),
        tokenizer=tokenizer,
    )

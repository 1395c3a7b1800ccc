"""SentencePiece models (`.model` files) through the sentencepiece library."""

import dataclasses

from mta.data.tokenizers.base import Tokenizer, fingerprint, wrong_kind


@dataclasses.dataclass(frozen=True, eq=False)
class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model: BOS/EOS/pad are the model's own ids (pad = EOS if it has none)."""

    processor: object = None

    def _encode(self, text):
        return self.processor.encode(text)  # no BOS/EOS: the processor adds none by default

    def _decode(self, ids):
        return self.processor.decode(ids)


def load(path: str, data: bytes) -> SentencePieceTokenizer:
    """The tokenizer of a `.model` file's bytes; TokenizerError if they are no such model or
    the model has no EOS id."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(data)
    except Exception as err:  # RuntimeError, or a protobuf/OSError for some inputs
        raise wrong_kind(path, "sentencepiece", err) from None
    eos = processor.eos_id()
    if eos < 0:
        raise wrong_kind(path, "sentencepiece", "the model has no end-of-sentence id (eos_id)")
    bos, pad = processor.bos_id(), processor.pad_id()
    return SentencePieceTokenizer(
        kind="sentencepiece",
        path=path,
        vocab_size=processor.get_piece_size(),
        bos_id=bos if bos >= 0 else eos,
        eos_id=eos,
        pad_id=pad if pad >= 0 else eos,
        fingerprint=fingerprint("sentencepiece", data),
        processor=processor,
    )

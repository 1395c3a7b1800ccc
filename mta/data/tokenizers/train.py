"""Training tokenizer files on a corpus (the `mta tokenizer train` command's work).

    docs = corpus_documents([])                                   # [] : the bundled corpus
    train_sentencepiece(docs, "sp.model", 1000, "unigram")        # or "bpe"
    train_byte_bpe(docs, "tokenizer.json", 1000)                  # Hugging Face, byte-level
    train_byte_bpe(docs, "ranks.tiktoken", 1000, tiktoken=True)   # a tiktoken rank file

Every file gets BOS, EOS and pad ids `load_tokenizer` finds, and round-trips any text: the
SentencePiece models fall back to bytes and normalize nothing; the byte-level BPEs split text with
Llama-3's pattern, then merge bytes. The tiktoken file is the byte-level BPE's ranks (the 256
bytes, then each merge in order), so its special tokens are Llama-3's, appended after them.
"""

import base64
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from mta.data import text_corpus
from mta.data.tokenizers.tiktoken_bpe import LLAMA3_PATTERN

SP_SPECIALS = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3}  # <unk> <s> </s> <pad>
BPE_SPECIALS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2 of the Hugging Face file
MIN_VOCAB = {"sentencepiece": 260 + 1, "huggingface": 256 + len(BPE_SPECIALS) + 1}


def corpus_documents(inputs: Sequence[str]) -> list[str]:
    """The documents (text) of `inputs`: corpus directories (*.txt, *.jsonl, see
    text_corpus.read_corpus) or single text files (one document each); none: the bundled
    corpus. Raises
    CorpusError (one line naming the path) for one that cannot be read."""
    if not inputs:
        return [data.decode("utf-8", "replace") for _, data in text_corpus.bundled_documents()]
    documents = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            documents += [data for _, data in text_corpus.read_corpus(path)]
        elif path.is_file():
            try:
                documents.append(path.read_bytes())
            except OSError as err:
                raise text_corpus.CorpusError(f"{name}: cannot read ({err.strerror})") from None
        else:
            raise text_corpus.CorpusError(f"{name}: not found; {text_corpus.CORPUS_HELP}")
    return [data.decode("utf-8", "replace") for data in documents if data]


def _lines(documents: Iterable[str]) -> Iterable[str]:
    for document in documents:
        yield from (line for line in document.splitlines() if line.strip())


def train_sentencepiece(
    documents: Sequence[str],
    output: str,
    vocab_size: int,
    model_type: str = "unigram",
    specials: Sequence[str] = (),
) -> None:
    """Writes a SentencePiece model (unigram or bpe) of about `vocab_size` pieces (fewer if the
    corpus has too few) to `output`: <unk> 0, <s> 1, </s> 2, <pad> 3, `specials` as user-defined
    pieces, byte fallback, no normalization, no dummy prefix (so decode(encode(t)) == t)."""
    import sentencepiece

    model = io.BytesIO()
    with open(os.devnull, "w") as quiet:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(list(_lines(documents))),
            model_writer=model,
            logstream=quiet,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            split_digits=True,
            hard_vocab_limit=False,
            user_defined_symbols=list(specials),
            max_sentence_length=1 << 16,
            num_threads=min(os.cpu_count() or 1, 4),
            **SP_SPECIALS,
        )
    _write(output, model.getvalue())


def byte_bpe(documents: Sequence[str], vocab_size: int, specials: Sequence[str] = ()):
    """A trained byte-level BPE `tokenizers.Tokenizer`: <pad> 0, <s> 1, </s> 2, then `specials`,
    the 256 bytes and the merges; Llama-3's split pattern before the byte mapping."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*BPE_SPECIALS, *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer)
    return tokenizer


def train_byte_bpe(
    documents: Sequence[str],
    output: str,
    vocab_size: int,
    specials: Sequence[str] = (),
    tiktoken: bool = False,
) -> None:
    """Writes a byte-level BPE of about `vocab_size` ids to `output`: a Hugging Face
    tokenizer.json, or (tiktoken) its ranks as a tiktoken rank file (`specials` are then not
    written: a tiktoken file's special tokens are Llama-3's)."""
    tokenizer = byte_bpe(documents, vocab_size, () if tiktoken else specials)
    if tiktoken:
        _write(output, rank_file(tokenizer))
    else:
        _write(output, tokenizer.to_str().encode())


def rank_file(tokenizer) -> bytes:
    """The tiktoken rank file of a byte-level BPE (`byte_bpe`): its non-special tokens as bytes,
    ranked by id."""
    from tokenizers import pre_tokenizers

    alphabet = _byte_alphabet(pre_tokenizers.ByteLevel.alphabet())
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    tokens = sorted((i, t) for t, i in vocab.items() if t not in BPE_SPECIALS)
    lines = [
        base64.b64encode(bytes(alphabet[c] for c in token)) + b" %d" % rank
        for rank, (_, token) in enumerate(tokens)
    ]
    return b"\n".join(lines) + b"\n"


def _byte_alphabet(chars) -> dict[str, int]:
    """GPT-2's byte -> printable character map, inverted: {character: byte}."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[chr(b)] = b
        else:
            mapping[chr(256 + extra)] = b
            extra += 1
    assert set(mapping) == set(chars), "unexpected ByteLevel alphabet"
    return mapping


def _write(output: str, data: bytes) -> None:
    """Writes `data` to `output` whole (a temporary file renamed), creating its directory."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(path)

"""Train a tokenizer file on a corpus, for data.tokenizer.

    mta tokenizer train --kind sentencepiece --vocab-size 8000 --output tok/sp.model
    mta tokenizer train --kind sentencepiece --algorithm bpe --vocab-size 8000 --output sp.model \\
        --input corpus/ notes.txt
    mta tokenizer train --kind huggingface --vocab-size 8000 --output tok/tokenizer.json
    mta tokenizer train --kind tiktoken --vocab-size 8000 --output tok/ranks.tiktoken

(`python scripts/tokenizer.py ...` in a checkout is the same command.)

--input: corpus directories (*.txt files, each one document, and *.jsonl files with a "text"
string per line) or single text files; none: the bundled corpus (mta/data/text_corpus.py).
sentencepiece: a unigram (default) or BPE model with byte fallback (<unk> 0, <s> 1, </s> 2,
<pad> 3); huggingface: a byte-level BPE tokenizer.json (<pad> 0, <s> 1, </s> 2); tiktoken: the
same BPE as a rank file, to which Llama-3's 256 special tokens are appended when loaded. Both
BPEs split text with Llama-3's pattern. --special adds tokens (sentencepiece, huggingface).
Prints one JSON object on stdout (kind, path, fingerprint, vocab_size) and, on stderr, the
config overrides that use the file.

Exit codes: 0 success; 2 user error (one line: a missing or unreadable input, a vocabulary too
small for the bytes and special tokens, a bad argument).
"""

import json
import sys
from types import SimpleNamespace

from mta.cli.args import command_parser, positive_int, user_error

KINDS = ("sentencepiece", "huggingface", "tiktoken")


def parse_args(argv, prog=None):
    parser = command_parser(__doc__, prog)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=type(parser))
    train = commands.add_parser("train", help="train a tokenizer file on a corpus")
    train.add_argument(
        "--kind", choices=KINDS, required=True, help="the file's data.tokenizer.kind"
    )
    train.add_argument(
        "--algorithm",
        choices=("unigram", "bpe"),
        default="unigram",
        help="sentencepiece's model type (huggingface and tiktoken are byte-level BPE)",
    )
    train.add_argument("--vocab-size", type=positive_int, required=True)
    train.add_argument("--output", required=True, help="the file to write")
    train.add_argument(
        "--input", nargs="+", action="extend", default=[], metavar="PATH", help="corpus dirs/files"
    )
    train.add_argument(
        "--special", nargs="+", action="extend", default=[], metavar="TOKEN", help="extra tokens"
    )
    args = parser.parse_args(argv)
    if args.kind == "tiktoken" and args.special:
        train.error("--special: a tiktoken file's special tokens are Llama-3's (appended on load)")
    from mta.data.tokenizers.train import BPE_SPECIALS, SP_SPECIALS

    fixed = 256 + (len(SP_SPECIALS) if args.kind == "sentencepiece" else len(BPE_SPECIALS))
    smallest = fixed + len(args.special) + 1
    if args.vocab_size < smallest:
        train.error(
            f"--vocab-size: {args.vocab_size} is too small; the 256 bytes and the special tokens "
            f"take {smallest - 1} ids, so at least {smallest}"
        )
    return args


def train(args) -> dict:
    """Trains and writes the file; returns its tokenizer's record."""
    from mta.data.tokenizers import load_tokenizer
    from mta.data.tokenizers import train as training

    documents = training.corpus_documents(args.input)
    if args.kind == "sentencepiece":
        training.train_sentencepiece(
            documents, args.output, args.vocab_size, args.algorithm, args.special
        )
    else:
        tiktoken = args.kind == "tiktoken"
        training.train_byte_bpe(documents, args.output, args.vocab_size, args.special, tiktoken)
    return load_tokenizer(SimpleNamespace(kind=args.kind, path=args.output)).record()


def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    from mta.data.text_corpus import CorpusError

    try:
        record = train(args)
    except (CorpusError, OSError, RuntimeError) as err:  # RuntimeError: sentencepiece's trainer
        return user_error(" ".join(str(err).split()) or type(err).__name__)
    print(json.dumps(record))
    print(
        f"use it with: data.tokenizer.kind={record['kind']} data.tokenizer.path={record['path']}"
        f" model.vocab_size={record['vocab_size']} (or more)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

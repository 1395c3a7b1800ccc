"""Local text, nothing downloaded: a user's corpus directory, Python's own docs, filler sentences.

Documents are bytes, never decoded, so any encoding passes through unchanged:

- `read_corpus(directory)`: every `*.txt` file (searched recursively, in sorted path order) is one
  document; every line of a `*.jsonl` file is a JSON object whose "text" string is one document.
- `bundled_documents()`: the corpus used when no directory is given: the 79 topics of the Python
  language reference that CPython ships in its standard library as `pydoc_data.topics` (the pages
  `help("assignment")` prints, about 465 KB of English prose and code), plus the Zen of Python
  (`this`). It is the same on every machine with the same Python version.
- `prose_sentences()`: about 670 unique English sentences of those topics (ASCII, no digits,
  20-300 bytes), in reading order: the "text" filler of the long-context tasks.
- `noise_sentences()`: the five sentences of RULER's noise paragraph.
- `fill` and `weave`: filler of an exact byte budget, and items inserted between its sentences.
"""

import codecs
import contextlib
import functools
import hashlib
import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mta.data.checks import check_fraction

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
CORPUS_HELP = (
    "expected a directory holding *.txt files (each file one document) and/or *.jsonl files "
    '(each line a JSON object with a "text" string)'
)


class CorpusError(ValueError):
    """A corpus directory that cannot be read as documents: one line naming the directory or
    the file and line, and what is expected."""


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_NOT_PROSE = re.compile(r"[^A-Za-z ,.;:'\"()\-]")
_UNDERLINE = set("*=-~^")


def noise_sentences() -> list[str]:
    """The sentences of NOISE: ["The grass is green.", ..., "There and back again."]."""
    return _SENTENCE_END.split(NOISE)


def bundled_documents() -> list[tuple[str, bytes]]:
    """[(name, utf-8 text)]: the `pydoc_data.topics` pages by sorted topic name, then the Zen."""
    from pydoc_data.topics import topics

    with contextlib.redirect_stdout(io.StringIO()):  # `this` prints the Zen when first imported
        import this

    documents = [(f"pydoc_data.topics/{name}", topics[name].encode()) for name in sorted(topics)]
    zen = codecs.decode(this.s, "rot13")
    return documents + [("this", zen.encode())]


@functools.cache
def prose_sentences() -> tuple[str, ...]:
    """Unique prose sentences of the bundled topics, in reading order (see the module doc).

    Only unindented paragraphs (no code, lists or titles) are split; a sentence is kept if it is
    20-300 bytes, starts with a capital, ends with "." and has only letters, spaces and
    ,.;:'"()- (so no digits, which the tasks use for their answers).
    """
    sentences = {}
    for _, text in bundled_documents()[:-1]:
        for paragraph in re.split(r"\n\s*\n", text.decode()):
            lines = paragraph.split("\n")
            if not lines[0] or lines[0][0] in " *+-=|":
                continue
            if any(line.strip() and set(line.strip()) <= _UNDERLINE for line in lines):
                continue
            for sentence in _SENTENCE_END.split(" ".join(line.strip() for line in lines)):
                if (
                    20 <= len(sentence) <= 300
                    and sentence[0].isupper()
                    and sentence.endswith(".")
                    and not _NOT_PROSE.search(sentence)
                ):
                    sentences[sentence] = None
    return tuple(sentences)


def haystack_filler(rng: np.random.Generator, haystack: str, budget: int) -> list[str]:
    """Filler of exactly `budget` bytes (fill's pieces): prose from a random sentence on when
    haystack is "text", else the noise sentences from the first."""
    if haystack == "text":
        sentences = prose_sentences()
        return fill(sentences, int(rng.integers(len(sentences))), budget)
    return fill(noise_sentences(), 0, budget)


def fill(sentences: Sequence[str], start: int, budget: int) -> list[str]:
    """Filler text of exactly `budget` bytes (ASCII sentences), as a list of pieces.

    Takes sentences[start], sentences[start + 1], ... (cyclically) while they fit; the last piece
    is the beginning of the next sentence, cut to fill the budget exactly. Returns at least one
    piece (possibly ""), and len(" ".join(pieces)) == budget.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    pieces: list[str] = []
    used = -1  # bytes of " ".join(pieces), counting a separator before the first piece
    index = start
    while True:
        sentence = sentences[index % len(sentences)]
        if used + 1 + len(sentence) > budget:
            break
        pieces.append(sentence)
        used += 1 + len(sentence)
        index += 1
    if not pieces:
        return [sentence[:budget]]
    if used < budget:
        pieces.append(sentence[: budget - used - 1])
    return pieces


def weave(filler: Sequence[str], items: Sequence[str], gaps: Sequence[int]) -> str:
    """Joins filler pieces and items with single spaces, item i after `gaps[i]` filler pieces.

    gaps are in [0, len(filler)] and non-decreasing. The result has
    len(" ".join(filler)) + sum(len(item) + 1 for item in items) bytes.
    """
    if list(gaps) != sorted(gaps) or (len(gaps) and not 0 <= gaps[0] <= gaps[-1] <= len(filler)):
        raise ValueError(f"gaps must be non-decreasing in [0, {len(filler)}], got {list(gaps)}")
    pieces: list[str] = []
    item = 0
    for position in range(len(filler) + 1):
        while item < len(items) and gaps[item] == position:
            pieces.append(items[item])
            item += 1
        if position < len(filler):
            pieces.append(filler[position])
    return " ".join(pieces)


def gap_offsets(filler: Sequence[str]) -> list[int]:
    """Byte offset in " ".join(filler) of each gap 0..len(filler): gap g < len(filler) is where
    piece g starts, the last gap is the end of the text."""
    offsets = [0]
    for piece in filler:
        offsets.append(offsets[-1] + len(piece) + 1)
    offsets[-1] -= 1
    return offsets


def check_fractions(validation_fraction: float, test_fraction: float) -> None:
    """ValueError unless both are in (0, 1) and leave documents for train (sum < 1)."""
    check_fraction("validation_fraction", validation_fraction)
    check_fraction("test_fraction", test_fraction)
    if validation_fraction + test_fraction >= 1:
        raise ValueError(
            "validation_fraction + test_fraction must be < 1, got "
            f"{validation_fraction} + {test_fraction}"
        )


def _check_corpus_dir(directory: str | Path) -> list[Path]:
    path = Path(directory)
    if not path.is_dir():
        raise CorpusError(f"text corpus dir {str(directory)!r} does not exist: {CORPUS_HELP}")
    files = sorted(
        file for file in path.rglob("*") if file.suffix in (".txt", ".jsonl") and file.is_file()
    )
    if not files:
        raise CorpusError(
            f"text corpus dir {str(directory)!r} has no .txt or .jsonl file: {CORPUS_HELP}"
        )
    if all(file.stat().st_size == 0 for file in files):
        raise CorpusError(f"text corpus dir {str(directory)!r} has only empty files: {CORPUS_HELP}")
    return files


def corpus_fingerprint(directory: str | Path) -> str:
    """8 hex digits of a hash of the directory's absolute path and its files' names and sizes.

    Raises CorpusError (a ValueError) with one line naming the directory if it is missing, has
    no .txt/.jsonl file, or only empty ones.
    """
    files = _check_corpus_dir(directory)
    root = Path(directory).resolve()
    listing = [str(root)] + [
        f"{file.relative_to(directory)}\0{file.stat().st_size}" for file in files
    ]
    # File names that are not UTF-8 come as surrogate escapes; hash their bytes.
    data = "\n".join(listing).encode("utf-8", "surrogateescape")
    return hashlib.blake2b(data, digest_size=4).hexdigest()


def bundled_fingerprint() -> str:
    """8 hex digits of a hash of the bundled documents (changes with the Python version)."""
    digest = hashlib.blake2b(digest_size=4)
    for name, text in bundled_documents():
        digest.update(name.encode() + b"\0" + text + b"\0")
    return digest.hexdigest()


def _jsonl_documents(file: Path, name: str) -> Iterator[tuple[str, bytes]]:
    with file.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{file}:{number}"
            try:
                # Invalid UTF-8 survives as lone surrogates and is restored when re-encoded.
                record = json.loads(line.decode("utf-8", "surrogateescape"))
            except json.JSONDecodeError as error:
                raise CorpusError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise CorpusError(f'{where}: expected a JSON object with a "text" string')
            try:
                data = record["text"].encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # lone surrogates written as \ud800 escapes
                data = record["text"].encode("utf-8", "surrogatepass")
            yield f"{name}:{number}", data


def read_corpus(directory: str | Path) -> Iterator[tuple[str, bytes]]:
    """Yields (name, bytes) of every non-empty document of a corpus directory, in a fixed order.

    Names are paths relative to the directory, with ":line" for .jsonl documents. Raises
    CorpusError (a ValueError; one line naming the directory) if it is missing or holds no
    .txt/.jsonl file, naming file and line for a .jsonl line that is not a JSON object with
    "text", and naming the file if it cannot be read.
    """
    for file in _check_corpus_dir(directory):
        name = str(file.relative_to(directory))
        try:
            if file.suffix == ".txt":
                documents = [(name, file.read_bytes())]
            else:
                documents = _jsonl_documents(file, name)
            yield from ((name, data) for name, data in documents if data)
        except OSError as error:
            raise CorpusError(
                f"text corpus file {str(file)!r} cannot be read: {error.strerror}"
            ) from None

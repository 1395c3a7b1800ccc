"""The documents of one corpus source, streamed: files matched by a glob, or a prepared TFDS
dataset (`tfds:NAME`). Nothing here reads a whole file into memory.

    files = list_files("shards/**/*.jsonl.zst")        # sorted; CorpusError if none match
    for doc_id, pieces in read_unit(unit, "text", "error", skipped):
        text = "".join(pieces)                          # a .txt document comes in ~1 MB pieces

Formats, by file name: `.jsonl` (also `.jsonl.gz`, `.jsonl.zst`): one JSON object per line, its
`text_key` string is one document; `.parquet`: column `text_key`, one document per row; `.txt`:
the whole file is one document. A relative glob is relative to the current directory, like
every other path of a config; `**` matches any number of directories.

Document ids (`file:line`, `file:row`, `file`, or `tfds:NAME:index`, with the file relative to
the glob's fixed directory) decide the validation split, so the split depends neither on the
order of the files nor on the number of workers.
"""

import codecs
import glob
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from mta.data.text_corpus import CorpusError

FORMATS = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet", ".txt")
TFDS_PREFIX = "tfds:"
CHUNK = 1 << 20  # bytes read at a time; a .txt document's piece size
TFDS_UNIT = 50_000  # records of a TFDS source per unit of work


class Unit(NamedTuple):
    """One unit of work: a file (start, stop unused) or records [start, stop) of a TFDS
    source's train split; `root` is what document ids are relative to."""

    path: str
    root: str
    start: int = 0
    stop: int = 0


def is_tfds(pattern: str) -> bool:
    return pattern.startswith(TFDS_PREFIX)


def fixed_root(pattern: str) -> str:
    """The absolute directory of a glob's leading components without wildcards."""
    fixed = []
    for part in Path(os.path.expanduser(pattern)).parts[:-1]:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    return os.path.abspath(os.path.join(*fixed) if fixed else ".")


def list_files(pattern: str) -> list[str]:
    """Absolute paths of the files a glob matches, sorted; CorpusError (one line) if none do,
    if one has a format not in FORMATS, or if all are empty."""
    expanded = os.path.expanduser(pattern)
    files = sorted(os.path.abspath(f) for f in glob.glob(expanded, recursive=True))
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        where = "" if os.path.isabs(expanded) else f" (relative to {os.getcwd()})"
        raise CorpusError(f"{pattern!r} matches no file{where}: expected a glob of {_formats()}")
    for file in files:
        if not file.endswith(FORMATS):
            raise CorpusError(f"{file}: unsupported file type; expected {_formats()}")
    if all(os.path.getsize(f) == 0 for f in files):
        raise CorpusError(f"{pattern!r}: empty corpus (the {len(files)} matching files are empty)")
    return files


def _formats() -> str:
    return ", ".join(FORMATS) + " files"


def tfds_builder(pattern: str, data_dir: str):
    """The read-only TFDS builder of `tfds:NAME[/CONFIG][:VERSION]` prepared in data_dir."""
    import tensorflow_datasets as tfds

    name = pattern[len(TFDS_PREFIX) :]
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # TFDS raises many types for a name it cannot find
        raise CorpusError(
            f"{pattern}: no TFDS dataset {name!r} prepared in {data_dir} ({type(err).__name__})"
        ) from None
    if not builder.is_prepared():
        raise CorpusError(f"{pattern}: TFDS dataset not prepared in {data_dir}; build it first")
    return builder


def units(pattern: str, data_dir: str) -> list[Unit]:
    """The units of work of a source, in document order."""
    if not is_tfds(pattern):
        return [Unit(file, fixed_root(pattern)) for file in list_files(pattern)]
    size = tfds_builder(pattern, data_dir).info.splits["train"].num_examples
    return [
        Unit(pattern, data_dir, start, min(start + TFDS_UNIT, size))
        for start in range(0, size, TFDS_UNIT)
    ]


def fingerprint(pattern: str, data_dir: str, extra: str) -> str:
    """12 hex digits of a hash of the source's files (absolute path, size, mtime) and `extra`
    (what else defines the build); a TFDS source's files are those of its build directory."""
    if is_tfds(pattern):
        root = str(tfds_builder(pattern, data_dir).data_path)
        files = sorted(str(p) for p in Path(root).iterdir() if p.is_file())
    else:
        files = list_files(pattern)
    digest = hashlib.blake2b(extra.encode(), digest_size=6)
    for file in files:
        stat = os.stat(file)
        digest.update(f"\n{file}\0{stat.st_size}\0{stat.st_mtime_ns}".encode("utf-8", "replace"))
    return digest.hexdigest()


def read_unit(
    unit: Unit, text_key: str, bad_lines: str, skipped: list[int]
) -> Iterator[tuple[str, Iterator[str]]]:
    """(document id, text pieces) of every non-empty document of a unit, in order. A bad
    jsonl line is a CorpusError naming `file:line`, or with bad_lines == "skip" counted in
    skipped[0]. Unreadable, truncated or column-less files are CorpusErrors naming the file."""
    if is_tfds(unit.path):
        yield from _tfds_documents(unit, text_key)
        return
    name = os.path.relpath(unit.path, unit.root)
    try:
        if unit.path.endswith(".parquet"):
            yield from _parquet_documents(unit.path, name, text_key)
        elif unit.path.endswith(".txt"):
            yield name, _txt_pieces(unit.path)
        else:
            yield from _jsonl_documents(unit.path, name, text_key, bad_lines, skipped)
    except (OSError, EOFError) as err:
        detail = getattr(err, "strerror", None) or str(err)
        raise CorpusError(f"{unit.path}: cannot be read ({detail})") from None


def _blocks(path: str) -> Iterator[bytes]:
    """The decompressed bytes of a file in blocks; CorpusError if a .gz/.zst is truncated."""
    with open(path, "rb") as raw:
        if path.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw) as stream:
                while block := stream.read(CHUNK):
                    yield block
        elif path.endswith(".zst"):
            yield from _zstd_blocks(raw, path)
        else:
            while block := raw.read(CHUNK):
                yield block


def _zstd_blocks(raw, path: str) -> Iterator[bytes]:
    import zstandard

    decompressor = zstandard.ZstdDecompressor().decompressobj()
    started = False
    while block := raw.read(CHUNK):
        while block:
            started = True
            yield decompressor.decompress(block)
            block = decompressor.unused_data if decompressor.eof else b""
            if decompressor.eof:  # another frame may follow
                decompressor, started = zstandard.ZstdDecompressor().decompressobj(), False
    if started:
        raise CorpusError(f"{path}: truncated zstd stream (the file ends inside a frame)")


def _lines(path: str) -> Iterator[bytes]:
    rest = b""
    for block in _blocks(path):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _jsonl_documents(path, name, text_key, bad_lines, skipped) -> Iterator[tuple[str, list]]:
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)[text_key]
            if not isinstance(text, str):
                raise TypeError
        except (ValueError, TypeError, KeyError, IndexError) as err:
            if bad_lines == "skip":
                skipped[0] += 1
                continue
            problem = "not valid JSON" if isinstance(err, ValueError) else "no string"
            raise CorpusError(
                f"{path}:{number}: {problem}; expected a JSON object with a {text_key!r} string "
                "(data.corpus.bad_lines=skip skips and counts such lines)"
            ) from None
        if text:
            yield f"{name}:{number}", [text]


def _parquet_documents(path, name, text_key) -> Iterator[tuple[str, list]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow's ArrowInvalid and friends
        raise CorpusError(f"{path}: not a readable parquet file ({err})") from None
    columns = table.schema_arrow.names
    if text_key not in columns:
        raise CorpusError(
            f"{path}: no column {text_key!r}; expected a string column named by the source's "
            f"text_key (columns: {', '.join(columns)})"
        )
    row = 0
    for batch in table.iter_batches(batch_size=1024, columns=[text_key]):
        for text in batch.column(0).to_pylist():
            row += 1
            if text:
                yield f"{name}:{row}", [text if isinstance(text, str) else text.decode()]


def _txt_pieces(path: str) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for block in _blocks(path):
        yield decoder.decode(block)
    yield decoder.decode(b"", final=True)


def _tfds_documents(unit: Unit, text_key: str) -> Iterator[tuple[str, list]]:
    builder = tfds_builder(unit.path, unit.root)
    features = list(builder.info.features.keys())
    if text_key not in features:
        raise CorpusError(
            f"{unit.path}: no feature {text_key!r}; set the source's text_key to a text "
            f"feature (features: {', '.join(features)})"
        )
    try:
        source = builder.as_data_source()["train"]
    except Exception as err:
        raise CorpusError(
            f"{unit.path}: cannot be read as a data source ({type(err).__name__}); prepare it "
            "with file_format=array_record"
        ) from None
    for start in range(unit.start, unit.stop, 256):
        keys = list(range(start, min(start + 256, unit.stop)))
        for key, record in zip(keys, source.__getitems__(keys), strict=True):
            text = record[text_key]
            text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
            if text:
                yield f"{unit.path}:{key}", [text]

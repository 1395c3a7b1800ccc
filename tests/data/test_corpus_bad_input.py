"""scripts/train.py on bad corpus sources: exit 2, one `error:` line naming the file (and line)
and what is expected, and nothing in data_dir that a later run would read as built."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import TINY
from test_bad_input import assert_one_error_line, run_train  # beside this file

LINES = b'{"text": "first"}\n{"text": "second"}\nnot json\n{"body": "no text"}\n{"text": "5th"}\n'


def corpus_overrides(tmp_path: Path, path: str, *extra: str) -> list[str]:
    return [
        *TINY,
        f"data.data_dir={tmp_path / 'tfds'}",
        "data.task=corpus",
        "data.seq_len=32",
        "data.corpus.validation_fraction=0.4",
        f"data.sources=[{{path: '{path}'}}]",
        *extra,
    ]


def write(tmp_path: Path, case: str) -> str:
    """The files of a bad case under tmp_path/s; returns the source's glob."""
    folder = tmp_path / "s"
    folder.mkdir()
    good = b"".join(json.dumps({"text": f"doc {i}"}).encode() + b"\n" for i in range(40))
    if case in ("not_json", "no_text_key"):
        lines = LINES if case == "not_json" else LINES.replace(b"not json\n", b"")
        (folder / "bad.jsonl").write_bytes(lines)
    elif case == "truncated_gz":
        (folder / "x.jsonl.gz").write_bytes(gzip.compress(good * 50)[:-40])
    elif case == "truncated_zst":
        blob = zstandard.ZstdCompressor().compress(good * 50)
        (folder / "x.jsonl.zst").write_bytes(blob[: len(blob) // 2])
    elif case == "no_column":
        pq.write_table(pa.table({"content": ["a", "b"]}), folder / "x.parquet")
    elif case == "empty_files":
        (folder / "a.jsonl").write_bytes(b"")
        (folder / "b.txt").write_bytes(b"")
    elif case == "no_documents":
        (folder / "a.jsonl").write_bytes(b"\n\n" + b'{"text": ""}\n')
    return str(folder / "*.*")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_match", ["data.sources[0]:", "matches no file", "expected a glob of .jsonl"]),
        ("not_json", ["bad.jsonl:3: not valid JSON; expected a JSON object with a 'text'"]),
        ("no_text_key", ["bad.jsonl:3: no string; expected a JSON object with a 'text' string"]),
        ("truncated_gz", ["x.jsonl.gz: cannot be read (Compressed file ended"]),
        ("truncated_zst", ["x.jsonl.zst: truncated zstd stream"]),
        ("no_column", ["x.parquet: no column 'text'", "(columns: content)"]),
        ("empty_files", ["empty corpus (the 2 matching files are empty)"]),
        ("no_documents", ["empty corpus (no document in 1 files)"]),
    ],
)
def test_bad_sources(tmp_path, case, expected):
    path = str(tmp_path / "none" / "*.jsonl") if case == "no_match" else write(tmp_path, case)
    result = run_train(tmp_path / "run", corpus_overrides(tmp_path, path))
    assert_one_error_line(result, *expected)
    assert not list(tmp_path.rglob("dataset_info.json"))  # nothing reads as built
    assert not list(tmp_path.rglob("*.array_record*"))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.sources=[{path: a, wieght: 2}]", ["data.sources[0]: unknown key 'wieght'"]),
        ("data.sources=[{path: a, weight: -1}]", ["data.sources[0].weight: got -1.0"]),
        ("data.sources=[]", ["data.sources: empty; data.task: corpus needs a list"]),
        ("data.corpus.bad_lines=maybe", ["data.corpus: bad_lines: got 'maybe'; allowed"]),
    ],
)
def test_bad_source_settings(tmp_path, override, expected):
    result = run_train(tmp_path / "run", [*corpus_overrides(tmp_path, "x"), override])
    assert_one_error_line(result, *expected)


def test_bad_lines_skip_counts_them_and_trains(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    many = b"".join(json.dumps({"text": f"document {i}"}).encode() + b"\n" for i in range(30))
    (folder / "bad.jsonl").write_bytes(LINES + many)
    overrides = corpus_overrides(tmp_path, str(folder / "*.jsonl"), "data.corpus.bad_lines=skip")
    result = run_train(tmp_path / "run", overrides, "configs/toy/block_baseline_cpu.yaml")
    assert result.returncode == 0, result.stderr
    assert "skipped 2 bad lines" in result.stderr
    (stats,) = tmp_path.rglob("ingest.json")
    assert json.loads(stats.read_text())["skipped_lines"] == 2

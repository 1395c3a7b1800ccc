"""scripts/train.py on bad data input: exit code 2 and one `error:` line naming what is wrong and
what is allowed, never a traceback; a corpus that is not UTF-8 trains like any other."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL_MQAR = "{num_pairs: 4, key_len: 2, value_len: 2, length: 64, num_train: 50, num_test: 5}"


def run_train(workdir, overrides, config="configs/toy/block_mta_cpu.yaml"):
    return subprocess.run(
        [
            sys.executable,
            "scripts/train.py",
            "--config",
            config,
            "--workdir",
            str(workdir),
            *overrides,
            "train.steps=2",
            "eval.num_examples=4",
            "eval.batch_size=4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def corpus(root: Path, files: dict) -> str:
    """A corpus directory holding `files` ({name as bytes: content bytes}); returns its path."""
    root.mkdir(parents=True)
    for name, content in files.items():
        Path(os.fsdecode(bytes(root) + b"/" + name)).write_bytes(content)
    return str(root)


def text_task(directory) -> list[str]:
    return ["data.task=text", "data.seq_len=64", f"data.text.manual_dir={directory}"]


def assert_one_error_line(result, *expected):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", ["data.text: text corpus dir", "does not exist", "*.txt"]),
        ("empty", ["text corpus dir", "has no .txt or .jsonl file: expected a directory"]),
        ("one_document", ["has 1 non-empty documents: too few", "at least 3"]),
        ("bad_jsonl", ["lines.jsonl:2: not valid JSON"]),
    ],
)
def test_bad_corpus_directories(tiny_overrides, tmp_path, case, expected):
    files = {
        "missing": None,
        "empty": {},
        "one_document": {b"a.txt": b"only one"},
        "bad_jsonl": {b"lines.jsonl": b'{"text": "a"}\nnot json\n', b"a.txt": b"a"},
    }[case]
    directory = tmp_path / "corpus"
    if files is not None:
        corpus(directory, files)
    result = run_train(tmp_path / "run", [*tiny_overrides, *text_task(directory)])
    assert_one_error_line(result, *expected)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["data.task=nosuch"], ["data.task: got 'nosuch'; allowed: block, mqar", "mix"]),
        (
            ["data.task=mqar", "data.mqar.bogus=1"],
            ["unknown key 'data.mqar.bogus'; allowed here: num_train", "num_pairs, key_len"],
        ),
        (
            ["data.task=mqar", "data.params.bogus=1"],  # the form written before the registry
            ["data.params of task mqar: unknown parameter 'bogus'; allowed: num_train"],
        ),
        (["data.task=mqar", "data.mqar.key_len=9"], ["data.mqar: key_len must be between 1 and 8"]),
        (
            ["data.task=mix", "data.mixture=[{task: mqar}, {task: nosuch, weight: 1}]"],
            ["data.mixture[1].task: got 'nosuch'; allowed: block, mqar"],
        ),
        (
            ["data.task=mqar", "data.seq_len=16", f"data.mqar={SMALL_MQAR}"],
            ["data.seq_len: every train example of mqar/", "data.too_long=truncate"],
        ),
    ],
)
def test_bad_task_settings(tiny_overrides, tmp_path, overrides, expected):
    result = run_train(tmp_path / "run", [*tiny_overrides, *overrides])
    assert_one_error_line(result, *expected)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_corpus_that_is_not_utf8_trains(tiny_overrides, tmp_path):
    documents = {
        b"latin1.txt": "caf\xe9 cr\xe8me br\xfbl\xe9e ".encode("latin-1") * 8,
        b"binary.txt": bytes(range(256)),
        b"name-\xff\xfe.txt": b"a file whose name is not UTF-8 either",
        b"plain.txt": b"plain ASCII text, for the other splits",
        b"more.txt": b"and a fifth document",
    }
    directory = corpus(tmp_path / "corpus", documents)
    baseline = "configs/toy/block_baseline_cpu.yaml"  # compiles faster than MTA
    result = run_train(tmp_path / "run", [*tiny_overrides, *text_task(directory)], baseline)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    metrics = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in metrics] == [1, 2]

"""Training end to end: a golden loss, exact resume, and the CLI on a tiny config."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mta.train.loop import train
from mta.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]

# Losses at steps 1..6 of the tiny baseline config (tests/conftest.py), recorded on CPU.
GOLDEN_LOSSES = [
    5.563103675842285,
    5.5333452224731445,
    5.489100456237793,
    5.4224042892456055,
    5.332564830780029,
    5.203111171722412,
]


def losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir)}


def test_golden_losses(tiny_config, tmp_path):
    train(tiny_config(), tmp_path)
    got = [losses(tmp_path)[s] for s in range(1, 7)]
    np.testing.assert_allclose(got, GOLDEN_LOSSES, rtol=2e-5)


@pytest.mark.parametrize(
    "data",
    [[], ["data.task=text", "data.packing=pack", "data.seq_len=32"]],
    ids=["block", "packed"],
)
def test_resume_is_bitwise_identical(tiny_config, tmp_path, data):
    cfg = tiny_config("checkpoint.every=100", *data)
    train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "resumed", until_step=3)
    assert sorted(p.name for p in (tmp_path / "resumed/checkpoints").iterdir()) == ["3"]
    train(cfg, tmp_path / "resumed")
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert list(straight) == list(resumed) == [1, 2, 3, 4, 5, 6]
    for step in range(4, 7):
        assert straight[step] == resumed[step], step  # bitwise: data order and optimizer state


def test_cli_trains_checkpoints_and_resumes(tiny_overrides, tmp_path):
    workdir = tmp_path / "run"
    command = [
        sys.executable,
        "scripts/train.py",
        "--config",
        "configs/toy/block_mta_cpu.yaml",
        "--workdir",
        str(workdir),
        *tiny_overrides,
        "train.steps=4",
        "checkpoint.every=2",
        "log.tensorboard=true",
    ]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    saved = yaml.safe_load((workdir / "config.yaml").read_text())
    assert saved["train"]["steps"] == 4 and saved["model"]["dim"] == 32
    assert any((workdir / "tensorboard").iterdir())
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("loss", "lr", "tokens_per_s", "grad_norm"):
        assert all(np.isfinite(r[key]) for r in records)
    assert "eval/exact_match_error" in records[-1]

    more = subprocess.run(command + ["train.steps=6"], cwd=ROOT, capture_output=True, text=True)
    assert more.returncode == 0, more.stderr
    assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 4, 5, 6]
    assert json.loads(more.stdout.splitlines()[0])["step"] == 6

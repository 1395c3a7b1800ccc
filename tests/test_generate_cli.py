"""scripts/generate.py on a freshly trained tiny run: a completion, and one-line exit 2 for a
missing workdir, config, checkpoint or step and for bad arguments."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def generate(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts/generate.py"), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def workdir(tiny_overrides, tmp_path_factory):
    """A tiny baseline trained for 2 steps (checkpoint at step 2)."""
    path = tmp_path_factory.mktemp("generate") / "run"
    command = [
        sys.executable,
        "scripts/train.py",
        "--config",
        "configs/toy/block_baseline_cpu.yaml",
    ]
    command += ["--workdir", str(path), *tiny_overrides, "train.steps=2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return path


def test_generates_a_completion(workdir):
    result = generate(
        "--workdir", workdir, "--step", 2, "--prompt", "abcde.fghij.", "--max-new-tokens", 4,
        "--temperature", 0.8, "--top-k", 5, "--seed", 1, "--stop", "!", "?",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    assert "step 2: " in result.stderr and "finish reason" in result.stderr


def bad_workdirs(workdir: Path, tmp_path: Path) -> dict:
    """Workdirs that are broken in one way each."""
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    shutil.copy(workdir / "config.yaml", no_checkpoint / "config.yaml")
    (tmp_path / "no_config").mkdir()
    return {
        "missing": ["--workdir", tmp_path / "missing"],
        "no_config": ["--workdir", tmp_path / "no_config"],
        "no_checkpoint": ["--workdir", no_checkpoint],
        "no_such_step": ["--workdir", workdir, "--step", 7],
        "bad_step": ["--workdir", workdir, "--step", "two"],
        "bad_temperature": ["--workdir", workdir, "--temperature", -1],
        "zero_tokens": ["--workdir", workdir, "--max-new-tokens", 0],
    }


def test_bad_inputs_exit_2_with_one_line(workdir, tmp_path):
    for name, args in bad_workdirs(workdir, tmp_path).items():
        result = generate(*args, "--prompt", "ab")
        assert result.returncode == 2, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)
        assert "error" in result.stderr and result.stdout == "", name
    missing_prompt = generate("--workdir", workdir)
    assert missing_prompt.returncode == 2 and len(missing_prompt.stderr.splitlines()) == 1

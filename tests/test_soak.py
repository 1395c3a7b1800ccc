"""`mta bench soak` (mta/bench/soak.py) in a tiny setting: it trains, is SIGTERMed at the
middle, resumes, and its checks pass (RSS, open files, checkpoints kept, one metrics record per
logged step)."""

import json
import subprocess
import sys
from pathlib import Path

from mta.bench.soak import logged_steps
from mta.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_soak_runs_its_checks_in_a_tiny_setting(tiny_overrides, tmp_path):
    out, workdir = tmp_path / "soak.jsonl", tmp_path / "run"
    command = [sys.executable, "scripts/bench.py", "soak", "--steps", "200", "--warmup", "40"]
    command += ["--checkpoint-every", "20", "--eval-every", "100", "--sample-every", "0.05"]
    command += [
        "--workdir",
        workdir,
        "--out",
        out,
        *tiny_overrides,
        "log.every=10",
        "checkpoint.keep=3",
    ]
    result = subprocess.run(list(map(str, command)), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["passed"] and record["failures"] == "", record["failures"]
    assert 100 <= record["stop_step"] < 200
    assert record["checkpoints"] == 3  # checkpoint.keep
    assert record["curve"][-1][0] == 200  # (step, RSS MB, open fds) samples up to the end
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]
    assert steps == logged_steps(load_config(workdir / "config.yaml"), 200, record["stop_step"])


def test_logged_steps_of_a_run_stopped_once():
    cfg = load_config(None, ["log.every=10", "eval.every=25"])
    assert logged_steps(cfg, 50, 33) == [10, 20, 25, 30, 33, 40, 50]

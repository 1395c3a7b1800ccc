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
    # 200 steps have no real warm-up: the first evaluation compiles after step 40, so RSS grows
    # by tens of MB that a 20,000-step run amortises; the bound itself is tested below
    command += ["--max-rss-growth-mb", "400"]
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


class _FakeSegment:
    def __init__(self, samples):
        self.samples = samples

    def warm(self, warmup):
        return [s for s in self.samples if s[0] > warmup]


def test_the_rss_check_fails_past_its_bound(tmp_path):
    from argparse import Namespace

    from mta.bench.soak import check

    cfg = load_config(None, ["log.every=10", "eval.every=100", "checkpoint.every=20"])
    (tmp_path / "checkpoints").mkdir()
    for step in (160, 180, 200):
        (tmp_path / "checkpoints" / str(step)).mkdir()
    steps = logged_steps(cfg, 200, 100)
    (tmp_path / "metrics.jsonl").write_text("".join(f'{{"step": {s}}}\n' for s in steps))
    # a leak: 0.3 MB a step, quarters' medians at steps 65 and 185 -> 36 MB
    leak = [(step, 500.0 + 0.3 * step, 40) for step in range(50, 201, 10)]
    teeth = [(step, 500.0 + 45 * (step % 20 == 0), 40) for step in range(50, 201, 10)]  # flat
    args = Namespace(warmup=40, steps=200, fd_slack=4)
    cfg.checkpoint.keep = 3

    def run(samples, bound):
        limits = Namespace(**vars(args), max_rss_growth_mb=bound)
        return check(cfg, limits, tmp_path, [_FakeSegment(samples)], 100)

    assert run(leak, 40)["passed"], run(leak, 40)["failures"]
    bad = run(leak, 30)
    assert not bad["passed"] and "RSS grew 36 MB after warm-up" in bad["failures"]
    assert run(teeth, 30)["passed"]  # a 45 MB saw-tooth around a flat level is no growth

"""One run per workdir, on real processes: a second launch is refused naming the holder, the lock
of a killed run is taken over, and evaluations of one step running at once leave whole files."""

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

from test_faults import command, run, wait_for_step

ROOT = Path(__file__).resolve().parent.parent
BLOCK_SUITE = """name: block_only
num_examples: 4
batch_size: 4
tasks:
  block:
    - {n: 5, l: 2, variants: [all], lengths: [31]}
"""


def start(workdir, overrides):
    return subprocess.Popen(
        command(workdir, overrides, "train.steps=100000", "checkpoint.every=1000"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_launch_is_refused_and_a_dead_holders_lock_taken_over(tiny_overrides, tmp_path):
    first = start(tmp_path, tiny_overrides)
    wait_for_step(tmp_path, 1, first)
    holder = json.loads((tmp_path / "run.lock").read_text())
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()

    second = run(tmp_path, tiny_overrides, "train.steps=2")
    assert second.returncode == 2
    assert second.stderr.splitlines() == [
        f"error: {tmp_path} is in use by pid {first.pid} on host {holder['host']} "
        f"(started {holder['started']}); wait for it to end or use another workdir"
    ]
    assert first.poll() is None  # the holder trains on

    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert (tmp_path / "run.lock").exists()  # left behind by the killed run
    third = run(tmp_path, tiny_overrides, "train.steps=2")
    assert third.returncode == 0, third.stderr
    assert (
        f"warning: taking over the stale lock {tmp_path / 'run.lock'} of pid {first.pid} on host "
        f"{holder['host']} (started {holder['started']}), which no longer runs"
    ) in third.stderr.splitlines()
    assert not (tmp_path / "run.lock").exists()  # released at the end


def test_a_sigterm_releases_the_lock(tiny_overrides, tmp_path):
    process = start(tmp_path, tiny_overrides)
    wait_for_step(tmp_path, 1, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert not (tmp_path / "run.lock").exists()


def test_evaluations_of_the_same_step_at_once_leave_whole_files(tiny_overrides, tmp_path):
    workdir = tmp_path / "run"
    assert run(workdir, tiny_overrides, "train.steps=2").returncode == 0
    suite = tmp_path / "suite.yaml"
    suite.write_text(BLOCK_SUITE)
    evaluate = [sys.executable, "scripts/eval.py", "--workdir", str(workdir)]
    evaluate += ["--suite", str(suite), "--data-dir", str(tmp_path / "tfds")]
    built = subprocess.run(evaluate, cwd=ROOT, capture_output=True, text=True)  # builds the data
    assert built.returncode == 0, built.stderr
    at_once = [
        subprocess.Popen(evaluate, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for process in at_once:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    out = workdir / "eval" / "2"
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == 2 and "block" in results["results"]
    assert len((out / "samples" / "block.jsonl").read_text().splitlines()) == 4
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

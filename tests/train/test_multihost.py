"""Two real JAX processes (CPU, gloo over 127.0.0.1) train like one process with two devices,
each reading its own share of every batch, and agree on the checkpoint; they run ahead of the
devices (no wait per step) and still stop at the same step on a signal or a NaN."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mta.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(workdir, overrides, *extra, program=("scripts/train.py",)):
    return [
        sys.executable,
        *program,
        "--config",
        "configs/toy/block_mta_cpu.yaml",
        "--workdir",
        str(workdir),
        *overrides,
        "eval.every=0",
        "train.steps=4",
        *extra,
    ]


def launch_two_processes(workdir, overrides, *extra, env=None, program=None):
    """Starts scripts/train.py (or python `program`, e.g. ["-c", code]) as processes 0 and 1 of
    one JAX run over 127.0.0.1."""
    port = free_port()
    return [
        subprocess.Popen(
            command(
                workdir,
                overrides,
                *extra,
                f"--coordinator=127.0.0.1:{port}",
                "--num-processes=2",
                f"--process-id={pid}",
                program=program or ("scripts/train.py",),
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for pid in (0, 1)
    ]


def finish(processes) -> None:
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr


def test_two_processes_of_four_devices_match_one_process_of_eight(tiny_overrides, tmp_path):
    def devices(n):
        return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}

    # Data x fsdp across the two processes. (Tensor parallelism is tested on 8 devices in one
    # process: a tensor-parallel program compiles long enough on a loaded 2-core machine for one
    # process to miss gloo's fixed 30 s window to join the first collective.)
    mesh = ["mesh.data=2", "mesh.fsdp=4", "mesh.tensor=1"]
    single = subprocess.run(
        command(tmp_path / "single", [*tiny_overrides, *mesh], "train.steps=6"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=devices(8),
    )
    assert single.returncode == 0, single.stderr

    finish(launch_two_processes(tmp_path / "multi", [*tiny_overrides, *mesh], env=devices(4)))
    assert sorted(p.name for p in (tmp_path / "multi/checkpoints").iterdir()) == ["3", "4"]
    # both processes restore step 4 and continue
    extra = ["train.steps=6"]
    finish(
        launch_two_processes(tmp_path / "multi", [*tiny_overrides, *mesh], *extra, env=devices(4))
    )
    expected = [r["loss"] for r in read_metrics(tmp_path / "single")]
    got = [r["loss"] for r in read_metrics(tmp_path / "multi")]  # written by process 0 only
    assert len(got) == 6
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_a_signal_to_one_process_stops_all_at_the_same_step(tiny_overrides, tmp_path):
    long_run = [*tiny_overrides, "checkpoint.every=1000"]
    processes = launch_two_processes(tmp_path, long_run, "train.steps=100000")
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        exited = [p for p in processes if p.poll() is not None]
        assert not exited, exited[0].communicate()[1]
        assert time.time() < deadline
        time.sleep(0.1)
    processes[1].send_signal(signal.SIGTERM)  # pre-empt one host only
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    stop_step = read_metrics(tmp_path)[-1]["step"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [str(stop_step)]


# scripts/train.py recording the order in which the host dispatches steps and reads their
# finiteness and stop votes, and any process_allgather (the old per-step stop agreement)
TRACE = """
import json, sys
from jax.experimental import multihost_utils
import mta.train.loop as loop
from mta.cli.train import main
from mta.train.stopping import StepChecks

events = []
make_step, check = loop.make_train_step, StepChecks._check
allgather = multihost_utils.process_allgather

def traced_make_step(*args, **kwargs):
    step_fn = make_step(*args, **kwargs)
    def dispatch(*inputs):
        out = step_fn(*inputs)
        events.append(["dispatch"])
        return out
    return dispatch

def traced_check(self, step, params, metrics):
    events.append(["read", step])
    return check(self, step, params, metrics)

def traced_allgather(*args, **kwargs):
    events.append(["allgather"])
    return allgather(*args, **kwargs)

loop.make_train_step = traced_make_step
StepChecks._check = traced_check
multihost_utils.process_allgather = traced_allgather
code = main(sys.argv[1:])
print("EVENTS " + json.dumps(events))
sys.exit(code)
"""


def test_two_processes_dispatch_each_step_before_reading_the_one_before(tiny_overrides, tmp_path):
    run = [*tiny_overrides, "log.every=1000", "checkpoint.every=1000"]
    processes = launch_two_processes(tmp_path, run, "train.steps=6", program=["-c", TRACE])
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
        events = json.loads(stdout.split("EVENTS ")[1])
        dispatched, reads = 0, []  # (step read, steps dispatched by then)
        for event in events:
            if event[0] == "dispatch":
                dispatched += 1
            elif event[0] == "read":
                reads.append((event[1], dispatched))
            elif dispatched:  # setup and the final save may use one, the steps not
                assert reads and reads[-1][0] == 6, f"a host collective in the loop: {events}"
        assert [step for step, _ in reads] == [1, 2, 3, 4, 5, 6], events
        # step k was read only once step k+1 was on its way; the last one at the end
        assert [by for _, by in reads] == [2, 3, 4, 5, 6, 6], events
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["6"]


def test_a_nan_stops_both_processes_at_the_same_step_unsaved(tiny_overrides, tmp_path):
    # lr 0 at step 1, then 1e29, ...: the first steps are finite, a later one is not
    exploding = [*tiny_overrides, "train.lr=1e30", "train.warmup_steps=10", "checkpoint.every=2"]
    processes = launch_two_processes(tmp_path, exploding, "log.every=100", "train.steps=12")
    outputs, bad_steps = [p.communicate(timeout=600) for p in processes], set()
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 3, stderr
        line = stderr.strip().splitlines()[-1]
        bad_steps.add(int(line.split("at step ")[1].split(";")[0]))
    (bad_step,) = bad_steps  # the same on both
    assert bad_step > 2
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == list(range(2, bad_step, 2))


def wait_for_records(workdir, processes, count, timeout=300):
    """Waits until metrics.jsonl has `count` records; every process must still be running."""
    metrics = Path(workdir) / "metrics.jsonl"
    deadline = time.time() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= count):
        exited = [p for p in processes if p.poll() is not None]
        assert not exited, exited[0].communicate()[1]
        assert time.time() < deadline
        time.sleep(0.1)


PEER_TIMEOUT = 8  # seconds (train.peer_timeout)


@pytest.mark.parametrize("signum, victim", [(signal.SIGKILL, 1), (signal.SIGSTOP, 0)])
def test_a_dead_or_stopped_process_stops_the_others_naming_it(
    signum, victim, tiny_overrides, tmp_path
):
    run = [*tiny_overrides, "checkpoint.every=2", f"train.peer_timeout={PEER_TIMEOUT}"]
    processes = launch_two_processes(tmp_path, run, "train.steps=100000")
    wait_for_records(tmp_path, processes, 3)
    deadline = time.time() + 120  # and a finished checkpoint (saves are asynchronous)
    while not any(p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir()):
        assert time.time() < deadline
        time.sleep(0.1)
    processes[victim].send_signal(signum)
    killed_at = time.time()
    survivor = processes[1 - victim]
    try:
        _, stderr = survivor.communicate(timeout=PEER_TIMEOUT + 60)
        waited = time.time() - killed_at
    finally:
        processes[victim].kill()  # a stopped process is killed too
        processes[victim].communicate()
    assert survivor.returncode == 5, stderr
    assert waited < PEER_TIMEOUT + 30
    line = stderr.strip().splitlines()[-1]
    newest = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert line.startswith(f"error: process {victim} (host "), line
    assert f"pid {processes[victim].pid})" in line
    assert f"for {PEER_TIMEOUT} s (train.peer_timeout)" in line
    assert f"last checkpoint: {tmp_path.absolute() / 'checkpoints' / str(newest)};" in line
    assert not (tmp_path / "run.lock").exists() or victim == 0  # the survivor released it
    if signum == signal.SIGKILL:  # the relaunch resumes from that checkpoint
        finish(launch_two_processes(tmp_path, run, f"train.steps={newest + 1}"))
        assert read_metrics(tmp_path)[-1]["step"] == newest + 1

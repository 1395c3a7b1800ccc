"""Runs a sweep's runs as training subprocesses (`python -m mta.cli.train`), several at once.

Each run's stdout and stderr are appended to WORKDIR/train.log. Children run in their own
session, so a Ctrl-C or SIGTERM reaches the sweep only; it forwards the signal once to every
running child (which saves a checkpoint at its current step and exits), launches nothing more
and waits for them. Relaunching the sweep then resumes them.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

from mta.ablate.plan import Run

POLL_S = 0.2


def prepare_data(runs: list[Run]) -> None:
    """Builds each distinct dataset of `runs` once, here, so parallel runs never race to build
    the same TFDS dataset."""
    from mta.data import pipeline

    seen = []
    for run in runs:
        if run.cfg.data not in seen:
            seen.append(run.cfg.data)
            pipeline.prepare(run.cfg.data)


def last_line(path: Path) -> str:
    """The last non-empty line of a log file ('' if none)."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def start(run: Run) -> subprocess.Popen:
    """Launches one run with its output appended to WORKDIR/train.log."""
    run.workdir.mkdir(parents=True, exist_ok=True)
    with (run.workdir / "train.log").open("a") as log:
        return subprocess.Popen(
            run.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


class Forwarder:
    """While active, SIGINT and SIGTERM are recorded and forwarded to the running children."""

    def __init__(self, children: dict):  # label -> (Popen, Run, start time), kept up to date
        self.children, self.signum, self._previous = children, None, {}

    def _handle(self, signum, frame):
        if self.signum is None:
            print(f"ablate: {signal.Signals(signum).name}: stopping the runs", file=sys.stderr)
            for process, *_ in self.children.values():
                process.send_signal(signum)
        self.signum = signum

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def report_end(run: Run, code: int, seconds: float, stopping: bool) -> None:
    """One stderr line on how a run ended."""
    if stopping and code in (0, 130):
        print(f"ablate: {run.label} stopped with a checkpoint (exit {code})", file=sys.stderr)
    elif code == 0:
        print(f"ablate: {run.label} finished in {seconds:.0f} s", file=sys.stderr)
    else:
        log = run.workdir / "train.log"
        print(
            f"ablate: {run.label} exited with {code}: {last_line(log)} (see {log})", file=sys.stderr
        )


def execute(runs: list[Run], parallel: int = 1) -> tuple[dict[str, int], int | None]:
    """Runs `runs` (at most `parallel` at a time). Returns ({run label: exit code}, the signal
    that stopped the sweep or None)."""
    todo, running, codes = list(runs), {}, {}
    with Forwarder(running) as forwarder:
        while running or (todo and forwarder.signum is None):
            while todo and len(running) < parallel and forwarder.signum is None:
                run = todo.pop(0)
                print(
                    f"ablate: [{len(codes) + len(running) + 1}/{len(runs)}] {run.label}",
                    file=sys.stderr,
                )
                running[run.label] = (start(run), run, time.perf_counter())
            time.sleep(POLL_S)
            for label, (process, run, began) in list(running.items()):
                if process.poll() is not None:
                    del running[label]
                    codes[label] = process.returncode
                    seconds = time.perf_counter() - began
                    report_end(run, process.returncode, seconds, forwarder.signum is not None)
    return codes, forwarder.signum

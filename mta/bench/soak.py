"""A long toy run that shows nothing grows (`mta bench soak`): a benchmark, not a test.

`--steps` (20,000) steps of a toy config with a checkpoint every 100 steps and an evaluation
every 1,000, as `python -m mta.cli.train` in a subprocess, SIGTERMed at the middle and resumed.
The parent samples the training process's RSS and open file descriptors (from /proc) with the
step it has logged, and checks, for each of the two processes after its warm-up (`--warmup`
steps after its first step, when everything is compiled and a few checkpoints were saved):

- RSS grows by less than `--max-rss-growth-mb` (50 MB): the median of the last quarter of the
  samples minus the median of the first quarter (RSS saw-tooths by tens of MB around saves and
  evaluations; a leak moves the whole level, a peak against one sample measures the teeth);
- open file descriptors stay flat: the fewest open in the second half of the samples is at most
  `--fd-slack` (4) above the fewest in the first half (a save opens files for a while);
then that the checkpoint directory holds `checkpoint.keep` checkpoints and nothing else, and that
metrics.jsonl has exactly one record per logged step (every `log.every`-th, every evaluation's,
the stop step and the last). The record keeps the sampled curve (step, RSS MB, fds); `passed`
false makes the command exit 1.
"""

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mta.bench.harness import ROOT, Recorder, UserError, load_cfg, resolve_config, rss_bytes

DEFAULT_CONFIG = "configs/toy/block_baseline_cpu.yaml"
COLUMNS = [  # (markdown header, record key)
    ("config", "config"),
    ("steps", "steps"),
    ("SIGTERM at", "stop_step"),
    ("RSS after warm-up (MB)", "rss_warm_mb"),
    ("RSS growth (MB)", "rss_growth_mb"),
    ("open fds (min-max)", "fds"),
    ("checkpoints kept", "checkpoints"),
    ("metrics records", "records"),
    ("passed", "passed"),
    ("failures", "failures"),
]


class Segment:
    """One training process: its samples [(step, rss_mb, fds)] until it exits."""

    def __init__(self, command: list[str], workdir: Path):
        self.log = open(workdir / "soak_stderr.log", "a")  # noqa: SIM115 (closed in wait)
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log
        )
        self.metrics = workdir / "metrics.jsonl"
        # records of an earlier process are not this one's
        self.offset = self.metrics.stat().st_size if self.metrics.exists() else 0
        self.step, self.first_step = 0, None
        self.samples: list[tuple[int, float, int]] = []

    def _read_steps(self) -> None:
        if not self.metrics.exists():
            return
        with open(self.metrics) as file:
            file.seek(self.offset)
            for line in file.readlines():
                if line.endswith("\n"):
                    self.offset += len(line.encode())
                    self.step = json.loads(line)["step"]
                    self.first_step = self.first_step or self.step

    def sample(self) -> None:
        self._read_steps()
        pid = self.process.pid
        try:
            fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        except OSError:
            return
        rss = rss_bytes(pid) / 2**20
        if fds and rss:  # not an exiting process
            self.samples.append((self.step, rss, fds))

    def run(self, interval: float, stop_at: int | None = None) -> int:
        """Samples until the process exits (SIGTERM once it has logged `stop_at`); its code."""
        signalled = False
        while self.process.poll() is None:
            self.sample()
            if stop_at is not None and not signalled and self.step >= stop_at:
                self.process.send_signal(signal.SIGTERM)
                signalled = True
            time.sleep(interval)
        self._read_steps()
        self.log.close()
        return self.process.returncode

    def warm(self, warmup: int) -> list[tuple[int, float, int]]:
        """The samples after warm-up and before the last record (then it saves and exits)."""
        start = (self.first_step or 0) + warmup
        return [s for s in self.samples if start <= s[0] < self.step]


def logged_steps(cfg, steps: int, stop_step: int) -> list[int]:
    """The steps mta/train/loop.py writes a record for in a run stopped once at stop_step."""
    every, evals = cfg.log.every, cfg.eval.every
    return sorted(
        s
        for s in range(1, steps + 1)
        if s % every == 0 or (evals and s % evals == 0) or s in (steps, stop_step)
    )


def thinned(samples: list, most: int = 400) -> list:
    """At most about `most` evenly spaced samples (and the last)."""
    stride = max(1, len(samples) // most)
    return samples[::stride] + ([samples[-1]] if samples and (len(samples) - 1) % stride else [])


def check(cfg, args, workdir: Path, segments: list[Segment], stop_step: int) -> dict:
    """The numbers and the failures of one soak run."""
    failures, growth, warm_rss, fds, fd_growth = [], [], [], [], []
    for index, segment in enumerate(segments):
        warm = segment.warm(args.warmup)
        if len(warm) < 2:
            failures.append(f"process {index}: fewer than 2 samples after warm-up")
            continue
        rss = [s[1] for s in warm]
        quarter = max(1, len(rss) // 4)
        growth.append(float(np.median(rss[-quarter:]) - np.median(rss[:quarter])))
        warm_rss.append(rss[0])
        fds += [s[2] for s in warm]
        half = len(warm) // 2  # files held between saves: the floor of each half
        fd_growth.append(min(s[2] for s in warm[half:]) - min(s[2] for s in warm[:half]))
        if growth[-1] >= args.max_rss_growth_mb:
            failures.append(f"process {index}: RSS grew {growth[-1]:.0f} MB after warm-up")
    if max(fd_growth, default=0) > args.fd_slack:
        failures.append(f"the floor of open fds rose by {max(fd_growth)} after warm-up")
    kept = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    expected = sorted({s for s in range(cfg.checkpoint.every, args.steps + 1, cfg.checkpoint.every)}
                      | {stop_step, args.steps})[-cfg.checkpoint.keep :]  # fmt: skip
    if kept != sorted(map(str, expected)):
        failures.append(f"checkpoints {kept}, expected {expected}")
    records = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
    if records != logged_steps(cfg, args.steps, stop_step):
        failures.append(f"metrics.jsonl steps differ from one record per logged step: {records}")
    return {
        "stop_step": stop_step,
        "rss_warm_mb": round(max(warm_rss, default=0.0), 1),
        "rss_growth_mb": round(max(growth, default=0.0), 1),
        "fds": f"{min(fds, default=0)}-{max(fds, default=0)}",
        "checkpoints": len(kept),
        "records": len(records),
        "passed": not failures,
        "failures": "; ".join(failures),
        "curve": thinned([s for segment in segments for s in segment.samples]),
    }


def run(args, rec: Recorder) -> None:
    """Trains, SIGTERMs at the middle, resumes, checks; one record."""
    overrides = [
        *args.overrides,
        f"train.steps={args.steps}",
        f"checkpoint.every={args.checkpoint_every}",
        f"eval.every={args.eval_every}",
        "log.progress=off",
    ]
    cfg = load_cfg(args.config, overrides)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mta_soak_"))
    if (workdir / "checkpoints").exists():
        raise UserError(f"--workdir {workdir} already has checkpoints; soak needs a fresh one")
    command = [sys.executable, "-m", "mta.cli.train", "--config", resolve_config(args.config)]
    command += ["--workdir", str(workdir), *overrides]
    workdir.mkdir(parents=True, exist_ok=True)
    first = Segment(command, workdir)
    codes = [first.run(args.sample_every, stop_at=args.steps // 2)]
    stop_step = first.step
    second = Segment(command, workdir)
    codes.append(second.run(args.sample_every))
    result = check(cfg, args, workdir, [first, second], stop_step)
    if codes != [0, 0]:
        log = (workdir / "soak_stderr.log").read_text().strip().splitlines()[-1:]
        result["failures"] = f"exit codes {codes} ({log}); " + result["failures"]
        result["passed"] = False
    print(f"soak: {'passed' if result['passed'] else result['failures']}", file=sys.stderr)
    rec.emit(
        {
            "config": args.config,
            "overrides": " ".join(args.overrides),
            "steps": args.steps,
            "workdir": str(workdir),
            **result,
        }
    )

"""Metrics to WORKDIR/metrics.jsonl (one JSON object per logged step) and TensorBoard."""

import json
import os
from pathlib import Path


def _number(value):
    return value if isinstance(value, int | str) else float(value)


class MetricsWriter:
    """Appends records; on resume from step S, first moves records of steps after S aside (the
    run produces them again). Only process 0 writes."""

    def __init__(self, workdir: str | Path, resume_step: int, tensorboard: bool, enabled: bool):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        self._truncate_after(resume_step)
        self.file = self.path.open("a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """Moves records of steps after `step` to metrics.rolled_back.jsonl (kept, not lost)."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        dropped = [line for line in lines if json.loads(line)["step"] > step]
        if not dropped:
            return
        with (self.path.parent / "metrics.rolled_back.jsonl").open("a") as rolled_back:
            rolled_back.writelines(line + "\n" for line in dropped)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _number(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and not isinstance(value, str):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    """All records of WORKDIR/metrics.jsonl."""
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

"""What every benchmark shares: configs, the machine, JSON-lines records, timing, the matmul
probe, memory readings, and fresh subprocesses for configurations that may run out of memory.

    rec = Recorder("attention", out=None, note="", command="python scripts/bench.py attention")
    rec.emit({"T": 512, **timing_fields(time_calls(fn, repeats=5, warmup=1))})
    results = run_child([item, ...], timeout=600, max_bytes=max_memory_bytes(None))

A child is `python -m mta.bench.child ITEMS_JSON`: it measures each item with the benchmark's
`measure` function and prints one prefixed JSON line per item, so a peak RSS belongs to one
configuration and an out-of-memory or a timeout ends only that configuration's row.
"""

import datetime
import json
import os
import platform
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout, where relative configs are found too
RESULT_PREFIX = "@@bench-result "
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "MemoryError", "bad_alloc")


class UserError(Exception):
    """A bad argument or input found after parsing: reported as one line, exit code 2."""


# ---- Configs --------------------------------------------------------------------------------


def resolve_config(path: str) -> str:
    """A config path as given or relative to the checkout; UserError if neither exists."""
    for candidate in (Path(path), ROOT / path):
        if candidate.is_file():
            return str(candidate)
    raise UserError(f"config file not found: {path}")


def load_cfg(path: str, overrides: list[str]):
    """The validated config (ConfigError -> UserError), relative paths from the checkout too."""
    from mta.config import ConfigError, load_config
    from mta.train.mesh import check_batch

    try:
        cfg = load_config(resolve_config(path), overrides)
        check_batch(cfg)
    except ConfigError as err:
        raise UserError(str(err)) from None
    return cfg


# ---- Machine and records --------------------------------------------------------------------


def machine_info() -> dict:
    """CPU model, cores, memory, JAX version and backend, date and load: kept in every record."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(_meminfo_bytes("MemTotal") / 2**30, 1),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _meminfo_bytes(field: str) -> int:
    """A field of /proc/meminfo in bytes (0 where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Recorder:
    """Prints each record as a JSON line (and appends it to `out`), stamped with the run."""

    def __init__(self, bench: str, out: str | None, note: str, command: str):
        self.out = out
        self.records: list[dict] = []
        self.stdout = sys.stdout  # the JSON lines' own: everything else is sent to stderr
        self.stamp = {
            "bench": bench,
            "run_id": f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}",
            "command": command,
            "note": note,
            "machine": machine_info(),
        }
        if self.out:
            Path(self.out).parent.mkdir(parents=True, exist_ok=True)

    def emit(self, record: dict) -> dict:
        record = {**self.stamp, **record}
        line = json.dumps(record)
        print(line, file=self.stdout, flush=True)
        if self.out:
            with open(self.out, "a") as f:
                f.write(line + "\n")
        self.records.append(record)
        return record


# ---- Timing ---------------------------------------------------------------------------------


def time_calls(fn, repeats: int, warmup: int) -> list[float]:
    """Seconds per call of fn() (which must block until its result is ready), after warmup."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def timing_fields(times: list[float], prefix: str = "time") -> dict:
    """Median, min and all samples in milliseconds."""
    return {
        f"{prefix}_ms_median": 1e3 * statistics.median(times),
        f"{prefix}_ms_min": 1e3 * min(times),
        f"{prefix}_ms_samples": [round(1e3 * t, 4) for t in times],
    }


def matmul_probe(n: int, repeats: int = 2, dtype: str = "float32"):
    """A callable returning the [n, n] @ [n, n] GFLOP/s of the moment in `dtype` (best of
    `repeats` calls); compiled and run once here."""
    import jax

    a = jax.random.normal(jax.random.key(n), (n, n), dtype)
    dot = jax.jit(jax.numpy.dot)
    dot(a, a).block_until_ready()
    return lambda: (
        2 * n**3 / min(time_calls(lambda: dot(a, a).block_until_ready(), repeats, 0)) / 1e9
    )


def matmul_peak(sizes: list[int], repeats: int = 3, dtype: str = "float32") -> dict:
    """Best jnp.dot GFLOP/s in `dtype` over square sizes: the machine's attainable peak, now."""
    per_size = {str(n): round(matmul_probe(n, repeats, dtype)(), 2) for n in sizes}
    return {"matmul_peak_gflops": max(per_size.values()), "matmul_gflops_by_size": per_size}


def random_normal(seed: int, shape: tuple, scale: float = 1.0):
    """A float32 array of normal samples, drawn with numpy (eager JAX ops would each compile)."""
    import jax.numpy as jnp
    import numpy as np

    return jnp.asarray(np.float32(scale) * np.random.default_rng(seed).standard_normal(shape, "f4"))


# ---- Memory ---------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_bytes(pid: int) -> int:
    """Current RSS of a process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def max_memory_bytes(max_memory_gb: float | None) -> int:
    """--max-memory-gb, or 80% of the memory available now."""
    if max_memory_gb:
        return int(max_memory_gb * 2**30)
    return int(0.8 * (_meminfo_bytes("MemAvailable") or 8 * 2**30))


def dense_too_big(live_maps: int, B: int, H: int, T: int, max_bytes: int) -> str | None:
    """An 'oom (estimated ...)' status if `live_maps` float32 [B, H, T, T] maps cannot fit in
    max_bytes, else None: configurations that cannot fit are skipped, so the machine never gets
    near its real limit."""
    need = live_maps * 4 * B * H * T * T
    if need <= max_bytes:
        return None
    return (
        f"oom (estimated: {live_maps} float32 [B,H,T,T] maps = {need / 2**30:.1f} GB "
        f"> {max_bytes / 2**30:.1f} GB)"
    )


def looks_oom(text: str) -> bool:
    return any(marker in text for marker in OOM_MARKERS)


# ---- Subprocesses ---------------------------------------------------------------------------


def run_child(items: list[dict], timeout: float, max_bytes: int) -> list[dict]:
    """Runs `items` in order in one fresh subprocess. Returns one result dict per item run: the
    child's, then {"status": "oom" | "timeout" | "error: ..."} for the item it died on (the
    items after that one are not run). The timeout restarts with every finished item."""
    command = [sys.executable, "-m", "mta.bench.child", json.dumps(items)]
    results, status = [], None
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + timeout
        while len(results) < len(items) and status is None:
            try:
                line = lines.get(timeout=0.05)
            except queue.Empty:
                line = ""
            if line is None:
                status = _death_status(proc.wait(), stderr)
            elif line.startswith(RESULT_PREFIX):
                results.append(json.loads(line[len(RESULT_PREFIX) :]))
                deadline = time.monotonic() + timeout
            elif rss_bytes(proc.pid) > max_bytes:
                status = f"oom (RSS over {max_bytes / 2**30:.1f} GB, killed)"
            elif time.monotonic() > deadline:
                status = f"timeout (over {timeout:g} s, killed)"
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return results + ([{"status": status}] if status is not None else [])


def _pump(stream, lines: queue.Queue) -> None:
    """Copies a child's stdout lines into a queue; None at the end."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def _death_status(returncode: int, stderr) -> str:
    """Why a child ended before finishing its items: oom or the last line of its stderr."""
    stderr.seek(0)
    text = stderr.read()
    if returncode == -9 or looks_oom(text):
        return "oom"
    last = [line for line in text.splitlines() if line.strip()][-1:] or [f"exit {returncode}"]
    return f"error: {last[0].strip()[:300]}"

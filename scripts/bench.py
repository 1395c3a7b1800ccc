"""Speed and memory benchmarks of attention, training, decoding and the input pipeline.

    python scripts/bench.py attention --T 512 1024 2048 --repeats 5
    python scripts/bench.py train --config configs/toy/block_mta_cpu.yaml train.batch_size=16
    python scripts/bench.py decode --contexts 1024 --model-config configs/toy/block_mta_cpu.yaml
    python scripts/bench.py data
    python scripts/bench.py decode --out docs/bench_results.jsonl --markdown docs/benchmarks.md

Every measurement is one JSON object on stdout with its parameters, the machine and the numbers;
--out FILE also appends them to a JSONL file and --markdown FILE (re)writes this subcommand's
section of a markdown file from the newest run in that JSONL (or from this run without --out).
Attention and decoding configurations run in fresh subprocesses (this script with a hidden
--one flag), so a peak RSS belongs to one configuration and an out-of-memory or a timeout ends
only that configuration's row.

Exit codes: 0 success; 2 user error (one line naming what is wrong).
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import queue
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULT_PREFIX = "@@bench-result "
ATTENTION_VARIANTS = ("jax_dpa", "baseline", "mta_pre", "mta_full", "talking_heads", "diff")
REFERENCE = "jax_dpa"  # jax.nn.dot_product_attention: the yardstick of every ratio
BLOCKWISE_VARIANTS = ("baseline", "mta_pre", "mta_full", "talking_heads")
DECODE_METHODS = ("baseline", "mta_incremental", "mta_recompute")
MODEL_METHODS = ("model_cached", "model_recompute")
RELEASE_CONV = (6, 11)  # c_q x c_k of the release's pre and post key-query convolutions
DEFAULT_CONFIGS = ("configs/toy/block_mta_cpu.yaml", "configs/toy/block_baseline_cpu.yaml")


class UserError(Exception):
    """A bad argument or input found after parsing: reported as one line, exit code 2."""


# ---- Command line -------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as a single line (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(minimum: int):
    """argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    """Options of every subcommand: output files and a note."""
    parser.add_argument("--out", help="also append the JSON lines to this JSONL file")
    parser.add_argument("--markdown", help="(re)write this subcommand's section of this file")
    parser.add_argument("--note", default="", help="free text kept with every record")


def _shape_options(parser, heads: int = 8, head_dim: int = 64) -> None:
    parser.add_argument("--heads", type=positive_int, default=heads, help="H (default %(default)s)")
    parser.add_argument("--head-dim", type=positive_int, default=head_dim, help="D")
    parser.add_argument("--batch", type=positive_int, default=1, help="B (default %(default)s)")


def _subprocess_options(parser, timeout: float) -> None:
    parser.add_argument(
        "--timeout", type=positive_float, default=timeout, help="seconds per configuration"
    )
    parser.add_argument(
        "--max-memory-gb",
        type=positive_float,
        help="kill a configuration whose RSS passes this (default 80%% of available memory)",
    )


def build_parser() -> OneLineParser:
    """The CLI: one subparser per benchmark."""
    parser = OneLineParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = parser.add_subparsers(
        dest="bench", required=True, metavar="{attention,train,decode,data}"
    )

    att = sub.add_parser(
        "attention",
        help="forward+backward time and peak memory vs T",
        description="Forward+backward time and peak RSS of attention variants, each "
        "configuration in a fresh subprocess. Variants: jax_dpa = jax.nn.dot_product_attention "
        "(is_causal=True), the reference of every ratio; baseline = causal_attention; mta_pre = "
        "kq conv 6x11 before the softmax; mta_full = the release setting (kq conv 6x11 pre and "
        "post, linear pre mixing, grouped post mixing over all heads, gated group norm); "
        "talking_heads = grouped pre and post mixing over all heads; diff = "
        "differential_attention with H/2 heads. Impls: dense, blockwise "
        "(multi_token_attention(impl='blockwise'); 'unavailable' if it raises; not for jax_dpa "
        "or diff). A row stops at its first oom/timeout/error.",
    )
    att.add_argument(
        "--T", type=positive_int, nargs="+", default=[2**i for i in range(9, 16)],
        help="sequence lengths (default 512 ... 32768)",
    )  # fmt: skip
    att.add_argument(
        "--variants", nargs="+", choices=ATTENTION_VARIANTS, default=ATTENTION_VARIANTS,
        metavar="VARIANT", help=f"some of {', '.join(ATTENTION_VARIANTS)} (default: all)",
    )  # fmt: skip
    att.add_argument(
        "--impls", nargs="+", choices=("dense", "blockwise"), default=["dense", "blockwise"],
        metavar="IMPL", help="dense and/or blockwise (default: both)",
    )  # fmt: skip
    _shape_options(att)
    att.add_argument("--repeats", type=positive_int, default=5, help="timed calls (median)")
    att.add_argument(
        "--warmup", type=non_negative_int, default=1, help="untimed calls after compile (>= 0)"
    )
    _subprocess_options(att, timeout=600)
    _common(att)

    tr = sub.add_parser(
        "train",
        help="tokens/s and MFU of full training steps",
        description="Jitted train steps on random tokens; each step's MFU against the float32 "
        "matmul GFLOP/s measured just before it (the fastest of --matmul-sizes), median. "
        "Model FLOPs per sequence: 6 * params * T + 12 * layers * T^2 * (H * head_dim) / 2; "
        "MTA's conv and mixing FLOPs are reported apart.",
    )
    tr.add_argument("--config", action="append", help="YAML config (repeatable; default: toy pair)")
    tr.add_argument("overrides", nargs="*", help="dotted overrides for every config")
    tr.add_argument("--steps", type=positive_int, default=5, help="timed steps (median)")
    tr.add_argument("--warmup", type=positive_int, default=2, help="untimed steps after compile")
    tr.add_argument("--matmul-sizes", type=positive_int, nargs="+", default=[512, 1024, 2048])
    _common(tr)

    dec = sub.add_parser(
        "decode",
        help="per-token latency: cached vs recomputed decoding",
        description="Per-token latency at attention level: baseline = attend_step + commit "
        "without kernels; mta_incremental = the same with the release MTA kernels and a cache of "
        "CONTEXT positions; mta_recompute = recompute_step (the full dense T x T maps per "
        "token). Targets: incremental <= 2x baseline; >= 10x faster than recompute at 4096. "
        "--model-config adds mta.eval.generate.Generator (cached and use_cache=False).",
    )
    dec.add_argument(
        "--contexts", type=positive_int, nargs="+", default=[1024, 4096, 16384],
        help="cache sizes (default 1024 4096 16384)",
    )  # fmt: skip
    dec.add_argument(
        "--methods", nargs="+", choices=DECODE_METHODS, default=DECODE_METHODS, metavar="METHOD",
        help=f"some of {', '.join(DECODE_METHODS)} (default: all)",
    )  # fmt: skip
    _shape_options(dec)
    dec.add_argument("--steps", type=positive_int, default=20, help="timed tokens (median)")
    dec.add_argument("--recompute-steps", type=positive_int, default=3, help="timed recomputes")
    dec.add_argument("--model-config", help="also time mta.eval.generate with this config")
    dec.add_argument("--model-contexts", type=positive_int, nargs="+", help="default: --contexts")
    dec.add_argument("--model-overrides", nargs="+", default=[], help="dotted overrides")
    _subprocess_options(dec, timeout=600)
    _common(dec)

    data = sub.add_parser(
        "data",
        help="input pipeline tokens/s vs training tokens/s",
        description="Tokens/s of mta.data.pipeline (prepare, then the train_dataset iterator) "
        "and of training steps of the same config; target: pipeline >= 10x training.",
    )
    data.add_argument("--config", default=DEFAULT_CONFIGS[0], help="YAML config")
    data.add_argument("overrides", nargs="*", help="dotted overrides")
    data.add_argument("--batches", type=positive_int, default=50, help="timed batches")
    data.add_argument("--train-steps", type=positive_int, default=5, help="timed train steps")
    _common(data)
    return parser


def check_args(args) -> None:
    """Checks beyond argparse's (configs and overrides included), before any measurement;
    raises UserError."""
    if args.bench == "attention" and "diff" in args.variants and args.heads % 2:
        raise UserError(f"--heads {args.heads}: the diff variant needs an even number of heads")
    if args.bench == "train":
        for path in args.config or DEFAULT_CONFIGS:
            load_cfg(path, args.overrides)
    if args.bench == "data":
        load_cfg(args.config, args.overrides)
    if args.bench == "decode" and args.model_config:
        load_cfg(args.model_config, args.model_overrides)


def resolve_config(path: str) -> str:
    """A config path as given or relative to the repository; UserError if neither exists."""
    for candidate in (Path(path), ROOT / path):
        if candidate.is_file():
            return str(candidate)
    raise UserError(f"config file not found: {path}")


# ---- Machine, records, output ---------------------------------------------------------------


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
    """Prints each record as a JSON line (and appends it to --out), stamped with the run."""

    def __init__(self, args, argv):
        self.bench, self.out = args.bench, args.out
        self.records: list[dict] = []
        self.stdout = sys.stdout  # the JSON lines' own: everything else is sent to stderr
        self.stamp = {
            "bench": args.bench,
            "run_id": f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}",
            "command": shlex.join(["python", "scripts/bench.py", *argv]),
            "note": args.note,
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


# ---- Timing and subprocesses ----------------------------------------------------------------


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


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_bytes(pid: int) -> int:
    """Current RSS of a process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def max_memory_bytes(args) -> int:
    """--max-memory-gb, or 80% of the memory available now."""
    if args.max_memory_gb:
        return int(args.max_memory_gb * 2**30)
    return int(0.8 * (_meminfo_bytes("MemAvailable") or 8 * 2**30))


def run_child(items: list[dict], timeout: float, max_bytes: int) -> list[dict]:
    """Runs `items` in order in one fresh subprocess. Returns one result dict per item run: the
    child's, then {"status": "oom" | "timeout" | "error: ..."} for the item it died on (the
    items after that one are not run). The timeout restarts with every finished item."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(items)]
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
            elif _rss_bytes(proc.pid) > max_bytes:
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
    if returncode == -9 or _looks_oom(text):
        return "oom"
    last = [line for line in text.splitlines() if line.strip()][-1:] or [f"exit {returncode}"]
    return f"error: {last[0].strip()[:300]}"


def _looks_oom(text: str) -> bool:
    markers = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "MemoryError", "bad_alloc")
    return any(marker in text for marker in markers)


def child_main(items_json: str) -> int:
    """The hidden --one mode: measure each item, print one prefixed JSON line per item."""
    for item in json.loads(items_json):
        try:
            result = {"status": "ok", **MEASURE[item["kind"]](item)}
        except Exception as err:  # reported as the item's status; the row stops there
            message = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            result = {"status": "oom" if _looks_oom(message) else f"error: {message}"}
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# ---- Attention: the functions under test ----------------------------------------------------


def random_normal(seed: int, shape: tuple, scale: float = 1.0):
    """A float32 array of normal samples, drawn with numpy (eager JAX ops would each compile)."""
    import jax.numpy as jnp
    import numpy as np

    return jnp.asarray(np.float32(scale) * np.random.default_rng(seed).standard_normal(shape, "f4"))


def attention_inputs(variant: str, B: int, T: int, H: int, D: int) -> dict:
    """Random q, k, v and the variant's parameters (float32)."""
    import numpy as np

    c_q, c_k = RELEASE_CONV
    if variant == "diff":  # H/2 DIFF heads: 2 * (H/2) half-heads of width D, values 2D
        return {
            "q": random_normal(0, (B, T, H, D)),
            "k": random_normal(1, (B, T, H, D)),
            "v": random_normal(2, (B, T, H // 2, 2 * D)),
            "lam": np.float32(0.5),
        }
    inputs = {name: random_normal(i, (B, T, H, D)) for i, name in enumerate("qkv")}
    if variant == "mta_pre":
        inputs["kq_pre"] = random_normal(3, (H, c_q, c_k), 0.1)
    if variant == "mta_full":
        inputs.update(release_kernels(H))
        inputs["out_norm"] = np.ones((D,), np.float32)
        inputs["gate_w"] = random_normal(4, (D,), 0.02)
        inputs["gate_b"] = np.float32(0.0)
    if variant == "talking_heads":  # grouped pre and post mixing over all heads
        inputs["head_pre"] = random_normal(5, (1, H, H), 0.1)
        inputs["head_post"] = random_normal(6, (1, H, H), 0.1)
    return inputs


def attention_fn(variant: str, impl: str):
    """inputs dict -> attention output [B, T, H, D] (for mta_full after gated group norm)."""
    import jax

    from mta.attention import causal_attention, differential_attention, multi_token_attention
    from mta.model import rms_norm

    kernel_names = ("kq_pre", "head_pre", "kq_post", "head_post")

    def fn(x: dict):
        if variant == "jax_dpa":
            return jax.nn.dot_product_attention(x["q"], x["k"], x["v"], is_causal=True)
        if variant == "diff":
            return differential_attention(x["q"], x["k"], x["v"], x["lam"])
        if variant == "baseline" and impl == "dense":
            return causal_attention(x["q"], x["k"], x["v"])
        kernels = {name: x.get(name) for name in kernel_names}
        out = multi_token_attention(x["q"], x["k"], x["v"], **kernels, impl=impl)
        if variant != "mta_full":
            return out
        # group norm with scalar sigmoid gating, as Attention._group_norm in mta/model.py
        normed = rms_norm(out, x["out_norm"], 1e-5)
        return normed * jax.nn.sigmoid(normed @ x["gate_w"] + x["gate_b"])[..., None]

    return fn


def attention_step(variant: str, impl: str):
    """The benchmarked computation: value and gradient of <out, cotangent> w.r.t. all inputs."""
    import jax
    import jax.numpy as jnp

    fn = attention_fn(variant, impl)

    def loss(x, cotangent):
        return jnp.vdot(fn(x), cotangent)

    return jax.value_and_grad(loss)


def attention_available(variant: str, impl: str, heads: int) -> str | None:
    """None if (variant, impl) traces at a tiny size, else why not (e.g. blockwise missing)."""
    import jax

    try:
        inputs = attention_inputs(variant, 1, 16, heads, 8)
        out = jax.eval_shape(attention_fn(variant, impl), inputs)
        jax.eval_shape(attention_step(variant, impl), inputs, out)
    except Exception as err:  # any failure means this implementation cannot be benchmarked
        return " ".join(f"{type(err).__name__}: {err}".split())[:200]
    return None


def measure_attention(item: dict) -> dict:
    """Child side: compile, time forward+backward, read memory. Runs in a fresh process.

    peak_rss_mb is the process's lifetime peak (imports, compile, run); rss_increase_mb is
    that peak minus the resident size just before the first call (0 when compiling peaked
    higher than running); xla_temp_mb is XLA's own temp-buffer size of the program."""
    import jax

    B, T, H, D = item["B"], item["T"], item["H"], item["D"]
    inputs = attention_inputs(item["variant"], B, T, H, D)
    step = attention_step(item["variant"], item["impl"])
    out = jax.eval_shape(attention_fn(item["variant"], item["impl"]), inputs)
    cotangent = random_normal(99, out.shape)
    compiled = jax.jit(step).lower(inputs, cotangent).compile()
    rss_before = _rss_bytes(os.getpid()) / 2**20
    times = time_calls(
        lambda: jax.block_until_ready(compiled(inputs, cotangent)), item["repeats"], item["warmup"]
    )
    peak = peak_rss_mb()
    return {
        **timing_fields(times),
        "peak_rss_mb": round(peak, 1),
        "rss_before_mb": round(rss_before, 1),
        "rss_increase_mb": round(max(peak - rss_before, 0.0), 1),
        **_compiled_stats(compiled),
    }


def _compiled_stats(compiled) -> dict:
    """XLA's own temp-buffer size and FLOP count of a compiled program, where it reports them."""
    stats = {}
    try:
        stats["xla_temp_mb"] = round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1)
    except Exception:  # not every backend reports memory
        pass
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        stats["xla_gflop"] = round(cost["flops"] / 1e9, 3)
    except Exception:  # nor FLOPs
        pass
    return stats


# Rough number of float32 [B, H, T, T] maps alive at once in a dense implementation (forward +
# backward for the attention bench, forward only for a decoding recompute): a lower bound used
# only to skip configurations that cannot fit, so the machine never gets near its real limit.
LIVE_MAPS = {"jax_dpa": 3, "baseline": 3, "mta_pre": 5, "mta_full": 8, "talking_heads": 5,
             "diff": 5, "mta_recompute": 3}  # fmt: skip


def dense_too_big(name: str, B: int, H: int, T: int, max_bytes: int) -> str | None:
    """An 'oom (estimated ...)' status if the dense maps of `name` cannot fit, else None."""
    need = LIVE_MAPS[name] * 4 * B * H * T * T
    if need <= max_bytes:
        return None
    return (
        f"oom (estimated: {LIVE_MAPS[name]} float32 [B,H,T,T] maps = {need / 2**30:.1f} GB "
        f"> {max_bytes / 2**30:.1f} GB)"
    )


def bench_attention(args, rec: Recorder) -> None:
    """T outer, variants inner (the reference first), so the ratios at one T share conditions."""
    max_bytes = max_memory_bytes(args)
    rows = [(REFERENCE, "xla")] if REFERENCE in args.variants else []
    rows += [
        (variant, impl)
        for variant in args.variants
        if variant != REFERENCE
        for impl in args.impls
        if impl == "dense" or variant in BLOCKWISE_VARIANTS
    ]
    stopped = set()
    for variant, impl in rows:
        reason = attention_available(variant, impl, args.heads) if impl == "blockwise" else None
        if reason:
            rec.emit(
                {
                    "variant": variant,
                    "impl": impl,
                    "T": None,
                    "status": "unavailable",
                    "detail": reason,
                }
            )
            stopped.add((variant, impl))
    for T in args.T:
        reference = None
        for variant, impl in rows:
            if (variant, impl) in stopped:
                continue
            item = {
                "kind": "attention",
                "variant": variant,
                "impl": impl,
                "T": T,
                "B": args.batch,
                "H": args.heads,
                "D": args.head_dim,
                "repeats": args.repeats,
                "warmup": args.warmup,
            }
            result = _attention_result(item, args.timeout, max_bytes)
            if variant == REFERENCE and result["status"] == "ok":
                reference = result
            record = rec.emit({**item, **result, **_ratios(result, reference)})
            if record["status"] != "ok":
                stopped.add((variant, impl))


def _attention_result(item: dict, timeout: float, max_bytes: int) -> dict:
    """One configuration in a fresh subprocess, unless its dense maps cannot fit at all."""
    if item["impl"] != "blockwise":
        too_big = dense_too_big(item["variant"], item["B"], item["H"], item["T"], max_bytes)
        if too_big:
            return {"status": too_big}
    return run_child([item], timeout, max_bytes)[0]


def _ratios(result: dict, reference: dict | None) -> dict:
    """Time and RSS increase (floored at 1 MB) relative to jax.nn.dot_product_attention at the
    same T, in this run."""
    if reference is None or result["status"] != "ok":
        return {}
    return {
        "time_vs_jax_dpa": round(result["time_ms_median"] / reference["time_ms_median"], 3),
        "rss_increase_vs_jax_dpa": round(
            max(result["rss_increase_mb"], 1.0) / max(reference["rss_increase_mb"], 1.0), 3
        ),
    }


# ---- Training steps -------------------------------------------------------------------------


def load_cfg(path: str, overrides: list[str]):
    """The validated config (ConfigError -> UserError), relative paths from the repo too."""
    from mta.config import ConfigError, load_config
    from mta.train.mesh import check_batch

    try:
        cfg = load_config(resolve_config(path), overrides)
        check_batch(cfg)
    except ConfigError as err:
        raise UserError(str(err)) from None
    return cfg


def matmul_peak(sizes: list[int], repeats: int = 3) -> dict:
    """Best float32 jnp.dot GFLOP/s over square sizes: the machine's attainable peak, now."""
    per_size = {str(n): round(matmul_probe(n, repeats)(), 2) for n in sizes}
    return {"matmul_peak_gflops": max(per_size.values()), "matmul_gflops_by_size": per_size}


def matmul_probe(n: int, repeats: int = 2):
    """A callable returning the float32 [n, n] @ [n, n] GFLOP/s of the moment (best of
    `repeats` calls); compiled and run once here."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(n), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    return lambda: (
        2 * n**3 / min(time_calls(lambda: dot(a, a).block_until_ready(), repeats, 0)) / 1e9
    )


def model_flops_per_sequence(cfg, params: int, seq_len: int) -> dict:
    """Training FLOPs of one sequence: 6 * params * T (matmuls, forward + backward) plus causal
    attention 12 * layers * T^2 * width / 2 (width = H * head_dim: QK^T and AV, forward +
    backward, half of the T x T pairs). MTA's extra work (its convolutions and head mixing over
    whole T x T maps, x3 for forward + backward) is counted apart, not in MFU."""
    m, a = cfg.model, cfg.model.attention
    T, H = seq_len, m.num_heads
    head_dim = m.head_dim or (m.dim // (2 * H) if a.kind == "diff" else m.dim // H)
    width = H * head_dim * (2 if a.kind == "diff" else 1)
    model = 6 * params * T + 12 * m.num_layers * T**2 * width / 2
    return {"model": model, "mta_extra": 3 * _mta_forward_flops(cfg, T)}


def _mta_forward_flops(cfg, T: int) -> float:
    """Forward FLOPs of MTA's convolutions and head mixing on full [H, T, T] maps."""
    from mta.config import kq_layer_indices

    m, a = cfg.model, cfg.model.attention
    H, group = m.num_heads, a.head_group_size or m.num_heads
    per_map = 2 * H * T**2
    kq_layers = len(kq_layer_indices(a.kq_layers, m.num_layers))
    flops = 0.0
    for conv in (a.kq_pre, a.kq_post):
        if conv.enabled:
            flops += kq_layers * per_map * conv.c_q * conv.c_k
    mix = {"none": 0, "linear": H, "grouped": group, "conv3d": group}
    flops += m.num_layers * per_map * (mix[a.head_pre] + mix[a.head_post])
    return flops


def synthetic_batch(cfg, seq_len: int, seed: int = 0) -> dict:
    """Random tokens [B, T] with every weight 1 (and one document per row when packing)."""
    import numpy as np

    batch_size = cfg.train.batch_size
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.model.vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
    batch = {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "weights": np.ones((batch_size, seq_len), np.float32),
    }
    if cfg.data.packing == "pack":
        batch["segment_ids"] = np.ones((batch_size, seq_len), np.int32)
        batch["positions"] = np.tile(np.arange(seq_len, dtype=np.int32), (batch_size, 1))
    return batch


def measure_train(cfg, steps: int, warmup: int, batch: dict | None = None, probe=None) -> dict:
    """Wall times of a jitted train step (jitted as in mta/train/loop.py) on one batch
    (default: synthetic_batch); the first call, which compiles, is timed apart. With `probe`
    (matmul_probe), the matmul GFLOP/s just before each timed step too ("peaks")."""
    import functools

    import jax

    from mta.data import pipeline
    from mta.model import count_params
    from mta.train.mesh import batch_sharding, make_mesh, replicated
    from mta.train.state import TrainSetup
    from mta.train.step import train_step

    mesh = make_mesh(cfg.mesh)
    setup = TrainSetup(cfg, mesh)
    seq_len = pipeline.sequence_length(cfg.data)
    step_fn = jax.jit(
        functools.partial(train_step, setup.graphdef, setup.optimizer, setup.schedule, cfg.train),
        in_shardings=(setup.shardings, batch_sharding(mesh)),
        out_shardings=(setup.shardings, replicated(mesh)),
        donate_argnums=0,
    )
    batch = jax.device_put(batch or synthetic_batch(cfg, seq_len), batch_sharding(mesh))
    box = {"state": setup.init_state()}

    def one_step():
        box["state"], metrics = step_fn(box["state"], batch)
        jax.block_until_ready((box["state"], metrics))

    start = time.perf_counter()
    one_step()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        one_step()
    times, peaks = [], []
    for _ in range(steps):
        if probe is not None:
            peaks.append(probe())
        start = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - start)
    return {
        "params": count_params(box["state"]["params"]),
        "seq_len": seq_len,
        "batch_size": cfg.train.batch_size,
        "compile_s": round(compile_s, 2),
        "times": times,
        "peaks": peaks,
    }


def train_record(cfg, measured: dict, peak: dict) -> dict:
    """Throughput, model FLOPs and MFU of one config's measured steps. MFU is the median over
    steps of the step's model GFLOP/s over the matmul GFLOP/s probed just before it: the 2-core
    VM this was written on read 142-247 GFLOP/s within one run, so a peak measured once, apart
    from the steps, could make an MFU look 30% better or worse than the step deserves."""
    times, peaks = measured.pop("times"), measured.pop("peaks")
    step_s = statistics.median(times)
    tokens = measured["batch_size"] * measured["seq_len"]
    flops = model_flops_per_sequence(cfg, measured["params"], measured["seq_len"])
    model_flops = flops["model"] * measured["batch_size"]
    achieved = [model_flops / t / 1e9 for t in times]
    return {
        **measured,
        **timing_fields(times, "step"),
        "tokens_per_s": round(tokens / step_s, 1),
        "model_gflop_per_step": round(model_flops / 1e9, 4),
        "mta_extra_gflop_per_step": round(flops["mta_extra"] * measured["batch_size"] / 1e9, 4),
        "model_gflops": round(statistics.median(achieved), 3),
        **peak,
        "matmul_probe_gflops": [round(p, 2) for p in peaks],
        "mfu": round(statistics.median(a / p for a, p in zip(achieved, peaks, strict=True)), 4),
        "flops_formula": "6*params*T + 12*layers*T^2*(H*head_dim)/2 per sequence",
    }


def bench_train(args, rec: Recorder) -> None:
    """Each config (with the overrides); the matmul size that ran fastest at the start is probed
    again before every timed step."""
    paths = args.config or list(DEFAULT_CONFIGS)
    cfgs = [(path, load_cfg(path, args.overrides)) for path in paths]
    peak = matmul_peak(args.matmul_sizes)
    sizes = peak["matmul_gflops_by_size"]
    probe = matmul_probe(int(max(sizes, key=sizes.get)))
    for path, cfg in cfgs:
        measured = measure_train(cfg, args.steps, args.warmup, probe=probe)
        params = {"config": path, "overrides": args.overrides, "attention": _attention_kind(cfg)}
        rec.emit({**params, "status": "ok", **train_record(cfg, measured, peak)})


def _attention_kind(cfg) -> str:
    """Short description of a config's attention, e.g. 'mta(kq_pre 2x9)' or 'softmax'."""
    from mta.train.summary import layer_kinds

    return layer_kinds(cfg)[0]


# ---- Decoding -------------------------------------------------------------------------------


def release_kernels(H: int) -> dict:
    """The release MTA setting: kq conv 6x11 pre and post, linear pre mixing, grouped post
    mixing over all heads (random values: the speed does not depend on them)."""
    import numpy as np

    c_q, c_k = RELEASE_CONV
    return {
        "kq_pre": random_normal(10, (H, c_q, c_k), 0.1),
        "head_pre": np.eye(H, dtype=np.float32) + random_normal(11, (H, H), 0.01),
        "kq_post": random_normal(12, (H, c_q, c_k), 0.1),
        "head_post": random_normal(13, (1, H, H), 0.1),
    }


def synthetic_cache(B: int, S: int, H: int, D: int, length: int, kernels: dict):
    """A LayerCache of S positions filled to `length` with random keys/values and rows."""
    import numpy as np

    from mta.attention.decode import LayerCache

    filled = (np.arange(S) < length)[None, None, :, None]
    n_pre = kernels["kq_pre"].shape[1] - 1 if "kq_pre" in kernels else 0
    n_post = kernels["kq_post"].shape[1] - 1 if "kq_post" in kernels else 0
    return LayerCache(
        k=random_normal(20, (B, H, S, D)) * filled,
        v=random_normal(21, (B, H, S, D)) * filled,
        lengths=np.full((B,), length, np.int32),
        logit_rows=random_normal(22, (B, H, n_pre, S)),
        prob_rows=np.full((B, H, n_post, S), 1.0 / S, np.float32),
    )


def measure_decode(item: dict) -> dict:
    """Child side: per-token latency of one attention-level decoding method at one context."""
    import jax
    import numpy as np

    from mta.attention.decode import attend_step, commit, recompute_step

    B, S, H, D = item["B"], item["context"], item["H"], item["D"]
    kernels = {} if item["method"] == "baseline" else release_kernels(H)
    if item["method"] == "mta_recompute":
        q, k, v = (random_normal(30 + i, (B, S, H, D)) for i in range(3))
        lengths = np.full((B,), S, np.int32)
        step = jax.jit(recompute_step).lower(q, k, v, lengths, **kernels).compile()
        times = time_calls(
            lambda: step(q, k, v, lengths, **kernels).block_until_ready(), item["steps"], 1
        )
        return _per_token(times, B)
    # the cache holds `context` positions; the timed tokens fill its last free slots
    cache = synthetic_cache(B, S, H, D, S - item["steps"] - 2, kernels)
    q, k, v = (random_normal(30 + i, (B, 1, H, D)) for i in range(3))
    attend, write = jax.jit(attend_step), jax.jit(commit, donate_argnums=0)
    box = {"cache": cache}

    def one_token():  # as mta.eval.generate does it: the write is its own in-place call
        out, update = attend(q, k, v, box["cache"], **kernels)
        box["cache"] = write(box["cache"], update)
        jax.block_until_ready((out, box["cache"]))

    return _per_token(time_calls(one_token, item["steps"], 1), B)


def _per_token(times: list[float], batch: int) -> dict:
    """Latency per token (per step of the whole batch) and tokens/s."""
    fields = timing_fields(times, "per_token")
    fields["tokens_per_s"] = round(batch / statistics.median(times), 2)
    return fields


def measure_model_decode(item: dict) -> dict:
    """Child side: model-level per-token time of a mta.eval.generate.Generator over a random
    model: its jitted decode step and cache commit after a prompt pass of `context - steps - 1`
    tokens (cached), or its jitted full forward over `context` positions (recompute). These are
    the Generator's own jitted members; its public call adds sampling and Python work per token."""
    import jax
    import numpy as np
    from flax import nnx

    from mta.config import load_config
    from mta.eval.generate import Generator
    from mta.model import Transformer

    cfg = load_config(resolve_config(item["config"]), item["overrides"])
    gen = Generator(Transformer(cfg.model, nnx.Rngs(0)))
    S, steps = item["context"], item["steps"]
    tokens_BS = np.random.default_rng(0).integers(0, 256, (1, S), dtype=np.int32)
    box = {"length": S - steps - 1}  # tokens so far; the timed ones fill the rest
    if item["method"] == "model_recompute":

        def one_token():
            box["length"] += 1
            lengths_B = np.array([box["length"]], np.int32)
            gen._recompute(gen.state, tokens_BS, lengths_B).block_until_ready()

        return _per_token(time_calls(one_token, steps, 1), 1)
    lengths_B = np.array([box["length"]], np.int32)
    _, box["caches"] = gen._prefill(gen.state, tokens_BS[:, : box["length"]], lengths_B, max_len=S)

    def one_token():
        token_B1 = tokens_BS[:, box["length"] : box["length"] + 1]
        logits_BV, updates = gen._decode(gen.state, token_B1, box["caches"])
        box["caches"] = gen._commit(box["caches"], updates)
        jax.block_until_ready((logits_BV, box["caches"]))
        box["length"] += 1

    return _per_token(time_calls(one_token, steps, 1), 1)


def bench_decode(args, rec: Recorder) -> None:
    """Per context: the attention-level methods in one subprocess; then per model context the
    model-level methods in another; then the target ratios."""
    max_bytes = max_memory_bytes(args)
    by_key = {}
    for S in args.contexts:
        items = [_decode_item(args, method, S) for method in args.methods]
        for item, result in _run_items(items, args.timeout, max_bytes):
            by_key[(item["method"], S)] = rec.emit({"level": "attention", **item, **result})
    if args.model_config:
        overrides = args.model_overrides
        for S in args.model_contexts or args.contexts:
            items = [
                {
                    "kind": "model_decode",
                    "method": method,
                    "context": S,
                    "config": args.model_config,
                    "overrides": overrides,
                    "steps": args.recompute_steps if method == "model_recompute" else args.steps,
                }
                for method in MODEL_METHODS
            ]
            for item, result in _run_items(items, args.timeout, max_bytes):
                by_key[(item["method"], S)] = rec.emit({"level": "model", **item, **result})
    for record in decode_targets(by_key, args.contexts):
        rec.emit(record)


def _decode_item(args, method: str, S: int) -> dict:
    steps = args.recompute_steps if method == "mta_recompute" else args.steps
    return {
        "kind": "decode",
        "method": method,
        "context": S,
        "B": args.batch,
        "H": args.heads,
        "D": args.head_dim,
        "steps": steps,
    }


def _run_items(items: list[dict], timeout: float, max_bytes: int):
    """Pairs each item with its result, in one subprocess. A full recompute whose dense maps
    cannot fit is not run (status oom, estimated); items after a failure are skipped."""
    too_big = {
        id(item): dense_too_big("mta_recompute", item["B"], item["H"], item["context"], max_bytes)
        for item in items
        if item["method"] == "mta_recompute"
    }
    runnable = [item for item in items if not too_big.get(id(item))]
    results = iter(run_child(runnable, timeout, max_bytes) if runnable else [])
    failed = None
    for item in items:
        if too_big.get(id(item)):
            yield item, {"status": too_big[id(item)]}
        elif failed:
            yield item, {"status": f"skipped (the subprocess stopped at {failed})"}
        else:
            result = next(results)
            failed = item["method"] if result["status"] != "ok" else None
            yield item, result


def decode_targets(by_key: dict, contexts: list[int]) -> list[dict]:
    """The target checks: MTA incremental per token <= 2x the baseline (at every context) and
    >= 10x faster than full recompute at 4096 (the ratio at other contexts is info only)."""

    def ms(method, S):
        record = by_key.get((method, S))
        return record["per_token_ms_median"] if record and record["status"] == "ok" else None

    checks = []
    for S in contexts:
        inc, base, full = ms("mta_incremental", S), ms("baseline", S), ms("mta_recompute", S)
        if inc and base:
            checks.append(_check(S, "mta_incremental / baseline", inc / base, "<= 2"))
        if inc and full:
            target = ">= 10" if S == 4096 else None
            checks.append(_check(S, "mta_recompute / mta_incremental", full / inc, target))
    return checks


def _check(context: int, metric: str, value: float, target: str | None) -> dict:
    """One target record; met is None for an info-only ratio."""
    met = None
    if target:
        bound = float(target.split()[1])
        met = value <= bound if target.startswith("<=") else value >= bound
    return {"status": "ok", "kind": "target", "context": context, "metric": metric,
            "value": round(value, 3), "target": target, "met": met}  # fmt: skip


MEASURE = {
    "attention": measure_attention,
    "decode": measure_decode,
    "model_decode": measure_model_decode,
}


# ---- Input pipeline -------------------------------------------------------------------------


def bench_data(args, rec: Recorder) -> None:
    """Tokens/s of the input pipeline (prepare, then train_dataset's iterator, as in
    mta/train/loop.py) vs training steps of the same config on the pipeline's first batch."""
    from mta.data import pipeline

    cfg = load_cfg(args.config, args.overrides)
    start = time.perf_counter()
    builder = pipeline.prepare(cfg.data)
    prepare_s = time.perf_counter() - start
    seq_len, batch_size = pipeline.sequence_length(cfg.data), cfg.train.batch_size
    iterator = data_iterator(pipeline, builder, cfg, seq_len)
    first = next(iterator)
    times = time_calls(lambda: next(iterator), args.batches, 2)
    data_tps = args.batches * batch_size * seq_len / sum(times)
    measured = measure_train(cfg, args.train_steps, 2, batch=first)
    train_tps = batch_size * seq_len / statistics.median(measured["times"])
    rec.emit(
        {
            "config": args.config,
            "overrides": args.overrides,
            "status": "ok",
            "batch_size": batch_size,
            "seq_len": seq_len,
            "packing": cfg.data.packing,
            "prepare_s": round(prepare_s, 2),
            "batches": args.batches,
            **timing_fields(times, "batch"),
            "data_tokens_per_s": round(data_tps, 1),
            **timing_fields(measured["times"], "step"),
            "train_tokens_per_s": round(train_tps, 1),
            "ratio": round(data_tps / train_tps, 2),
            "target": ">= 10",
            "met": data_tps >= 10 * train_tps,
        }
    )


def data_iterator(pipeline, builder, cfg, seq_len: int):
    """The training batches of one process, built as mta/train/loop.py builds them."""
    import grain

    source = pipeline.split_source(builder, cfg.data, "train", seq_len)
    dataset = pipeline.train_dataset(
        source, cfg.data, seq_len, cfg.train.batch_size, cfg.train.seed
    )
    if isinstance(dataset, grain.MapDataset):
        dataset = dataset.to_iter_dataset()
    return iter(dataset)


# ---- Markdown -------------------------------------------------------------------------------

COLUMNS = {
    "attention": [
        ("variant", "variant"),
        ("impl", "impl"),
        ("B", "B"),
        ("H", "H"),
        ("D", "D"),
        ("T", "T"),
        ("status", "status"),
        ("fwd+bwd ms (median)", "time_ms_median"),
        ("x jax_dpa", "time_vs_jax_dpa"),
        ("peak RSS MB", "peak_rss_mb"),
        ("RSS increase MB", "rss_increase_mb"),
        ("x jax_dpa (RSS incr.)", "rss_increase_vs_jax_dpa"),
        ("XLA temp MB", "xla_temp_mb"),
    ],
    "train": [
        ("config", "config"),
        ("overrides", "overrides"),
        ("attention", "attention"),
        ("params", "params"),
        ("B", "batch_size"),
        ("T", "seq_len"),
        ("step ms (median)", "step_ms_median"),
        ("tokens/s", "tokens_per_s"),
        ("model GFLOP/step", "model_gflop_per_step"),
        ("MTA extra GFLOP/step", "mta_extra_gflop_per_step"),
        ("model GFLOP/s", "model_gflops"),
        ("matmul GFLOP/s before each step", "matmul_probe_gflops"),
        ("MFU (median over steps)", "mfu"),
    ],
    "decode": [
        ("level", "level"),
        ("method", "method"),
        ("context", "context"),
        ("B", "B"),
        ("H", "H"),
        ("D", "D"),
        ("config", "config"),
        ("status", "status"),
        ("ms/token (median)", "per_token_ms_median"),
        ("tokens/s", "tokens_per_s"),
    ],
    "data": [
        ("config", "config"),
        ("overrides", "overrides"),
        ("B", "batch_size"),
        ("T", "seq_len"),
        ("pipeline tokens/s", "data_tokens_per_s"),
        ("train tokens/s", "train_tokens_per_s"),
        ("ratio", "ratio"),
        ("target", "target"),
        ("met", "met"),
    ],
}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "-"
    return str(value).replace("|", "/")


def markdown_section(bench: str, records: list[dict]) -> str:
    """The section of one run: command, machine, note, then the table (and target checks)."""
    first, machine = records[0], records[0]["machine"]
    lines = [
        f"## {bench}",
        "",
        f"Command: `{first['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB; "
        f"jax {machine['jax']} ({machine['backend']}, {machine['devices']} device(s)); "
        f"load average {machine['load_avg_1m']} at start; {machine['date']}.",
    ]
    if first.get("note"):
        lines += ["", f"Note: {first['note']}"]
    columns = COLUMNS[bench]
    lines += ["", "| " + " | ".join(h for h, _ in columns) + " |"]
    lines += ["|" + "---|" * len(columns)]
    rows = [r for r in records if r.get("kind") != "target"]
    lines += ["| " + " | ".join(_cell(r.get(key)) for _, key in columns) + " |" for r in rows]
    targets = [r for r in records if r.get("kind") == "target"]
    if targets:
        lines += [""] + [f"- context {t['context']}: {_target_text(t)}" for t in targets]
    return "\n".join(lines) + "\n"


def _target_text(check: dict) -> str:
    """'metric = value (target ...: met)' or '(info)' for a ratio without a target."""
    if check["met"] is None:
        return f"{check['metric']} = {check['value']} (info)"
    verdict = "met" if check["met"] else "NOT met"
    return f"{check['metric']} = {check['value']} (target {check['target']}: {verdict})"


def write_markdown(path: str, bench: str, records: list[dict]) -> None:
    """Replaces (or appends) the marked section of `bench` in the markdown file."""
    begin, end = f"<!-- bench:{bench} begin -->", f"<!-- bench:{bench} end -->"
    block = f"{begin}\n{markdown_section(bench, records)}{end}\n"
    file = Path(path)
    text = (
        file.read_text()
        if file.exists()
        else (
            "# Benchmarks\n\nWritten by `scripts/bench.py --markdown`; each section is "
            "rewritten by the command it shows. Raw records: the JSONL file given with `--out`.\n\n"
        )
    )
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)


def newest_run(jsonl: str, bench: str) -> list[dict]:
    """The records of the newest run of `bench` in a JSONL file."""
    records = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    records = [r for r in records if r.get("bench") == bench]
    return [r for r in records if r["run_id"] == records[-1]["run_id"]] if records else []


# ---- Main -----------------------------------------------------------------------------------

BENCHES = {
    "attention": bench_attention,
    "train": bench_train,
    "decode": bench_decode,
    "data": bench_data,
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--one"] and len(argv) == 2:
        return child_main(argv[1])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
        rec = Recorder(args, argv)
        with contextlib.redirect_stdout(sys.stderr):  # e.g. TFDS's "Dataset ... prepared"
            BENCHES[args.bench](args, rec)
    except UserError as err:
        print(f"bench.py {args.bench}: error: {err}", file=sys.stderr)
        return 2
    if args.markdown:
        records = newest_run(args.out, args.bench) if args.out else rec.records
        if records:
            write_markdown(args.markdown, args.bench, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())

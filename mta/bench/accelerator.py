"""This codebase on whatever backend is present, in one command (`mta bench accelerator`):

    attention  forward+backward per variant and impl at --T (default 2048 8192 32768) against
               jax.nn.dot_product_attention (and its cuDNN kernel in bfloat16 on a GPU);
               each configuration in a fresh subprocess, as `mta bench attention`
    train      tokens/s and MFU in bfloat16 of the small LM pair and a 300M-shaped pair
               (baseline vs MTA), MFU against the bfloat16 matmul GFLOP/s probed before each
               step; target: MTA >= 0.6 x the baseline's tokens/s
    loop       loop overhead: a tiny model's steps/s through the real training loop
               (mta.train.loop.train) vs its jitted step called in a bare loop on the same
               batches; target <= 10%
    decode     tokens/s of cached decoding through mta.eval.generate's Generator

--tiny runs every part at toy sizes (a CPU test runs it). JSON lines as every benchmark, one
markdown table: part, name, setting, the measured value and the ratio it is judged by.
"""

import argparse
import copy
import tempfile
import time

from mta.bench import attention
from mta.bench.harness import Recorder, load_cfg, matmul_peak, matmul_probe, run_child
from mta.bench.train import measure_train, train_record

COLUMNS = [  # (markdown header, record key)
    ("part", "part"),
    ("name", "name"),
    ("setting", "setting"),
    ("status", "status"),
    ("value", "value"),
    ("unit", "unit"),
    ("ratio", "ratio"),
    ("target", "target"),
    ("met", "met"),
]
TRAIN_PAIRS = {  # name: (baseline, MTA) configs
    "small": ("configs/lm/small_baseline.yaml", "configs/lm/small_mta.yaml"),
    "300M": ("configs/lm/300M_baseline.yaml", "configs/lm/300M_mta.yaml"),
}
TINY_PAIR = ("configs/toy/block_baseline_cpu.yaml", "configs/toy/block_mta_cpu.yaml")
# The toy model of the tiny setting, as small as the tests' (tests/conftest.py).
TINY_MODEL = ["model.dim=32", "model.num_layers=2", "model.num_heads=2", "model.mlp_hidden=64"]
TINY_DATA = [
    "data.block.num_blocks=4",
    "data.block.num_train=2000",
    "data.block.num_validation=64",
    "data.block.num_test=64",
    "train.batch_size=8",
]
LOOP_CONFIG = "configs/toy/block_baseline_cpu.yaml"


def add_options(parser: argparse.ArgumentParser) -> None:
    """The subcommand's options (mta/cli/bench.py adds the common ones)."""
    from mta.cli.args import positive_float, positive_int

    parser.add_argument("--tiny", action="store_true", help="toy sizes everywhere (CPU test)")
    parser.add_argument(
        "--T", type=positive_int, nargs="+", help="attention lengths (default 2048 8192 32768)"
    )
    parser.add_argument(
        "--parts", nargs="+", choices=tuple(PARTS), default=list(PARTS), metavar="PART",
        help=f"some of {', '.join(PARTS)} (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--impls", nargs="+", choices=("dense", "blockwise", "pallas"),
        default=["dense", "blockwise"], metavar="IMPL",
        help="MTA impls of the attention part (default: dense blockwise)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32",
        help="dtype of the attention part's q, k, v (cuDNN's row is always bfloat16)",
    )  # fmt: skip
    parser.add_argument("--train-batch", type=positive_int, default=8, help="LMs' batch size")
    parser.add_argument("--steps", type=positive_int, default=5, help="timed train steps")
    parser.add_argument("--loop-steps", type=positive_int, default=50, help="timed loop steps")
    parser.add_argument("--data-dir", help="data.data_dir of the toy runs (default: a temp dir)")
    parser.add_argument(
        "--timeout", type=positive_float, default=300, help="seconds per subprocess row"
    )


def run(args, rec: Recorder) -> None:
    part_rec = _Parts(rec)
    for part in args.parts:
        part_rec.part = part
        PARTS[part](args, part_rec)


class _Parts:
    """A Recorder that stamps each record with the part it belongs to."""

    def __init__(self, rec: Recorder):
        self.rec, self.part = rec, ""

    def emit(self, record: dict) -> dict:
        return self.rec.emit({"part": self.part, **record})


def _attention(args, rec) -> None:
    import jax

    gpu = jax.default_backend() == "gpu"
    variants = ["jax_dpa", "baseline", "mta_pre", "mta_full"] + (["jax_dpa_cudnn"] if gpu else [])
    sizes = {"heads": 2, "head_dim": 8} if args.tiny else {"heads": 16, "head_dim": 64}
    sub = argparse.Namespace(
        T=args.T or ([16, 32] if args.tiny else [2048, 8192, 32768]),
        variants=variants, impls=args.impls, batch=1, repeats=2 if args.tiny else 5,
        warmup=1, timeout=args.timeout, max_memory_gb=_device_memory_gb(), dtype=args.dtype,
        **sizes,
    )  # fmt: skip
    attention.run(sub, _Summarised(rec, _attention_summary))


def _attention_summary(r: dict) -> dict:
    return {
        "name": f"{r['variant']} {r['impl']}",
        "setting": f"B={r.get('B')} H={r.get('H')} D={r.get('D')} T={r.get('T')} "
        f"{r.get('dtype', 'float32')} fwd+bwd",
        "value": r.get("time_ms_median"),
        "unit": "ms",
        "ratio": r.get("time_vs_jax_dpa"),
    }


class _Summarised:
    """Adds the table's columns (name, setting, value, unit, ratio) to a benchmark's records."""

    def __init__(self, rec, summary):
        self.rec, self.summary = rec, summary

    def emit(self, record: dict) -> dict:
        return self.rec.emit({**record, **self.summary(record)})


def _device_memory_gb() -> float | None:
    """The first device's memory where the backend reports it (the attention skip rule)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats["bytes_limit"] / 2**30 if "bytes_limit" in stats else None


def _train_cfgs(args) -> list[tuple[str, str, list[str]]]:
    """(pair name, config, overrides) of every train measurement, baseline then MTA."""
    if args.tiny:
        tiny = [*TINY_MODEL, *TINY_DATA, f"data.data_dir={_data_dir(args)}"]
        return [("toy", path, tiny) for path in TINY_PAIR]
    common = ["model.compute_dtype=bfloat16", f"train.batch_size={args.train_batch}"]
    return [(name, path, common) for name, pair in TRAIN_PAIRS.items() for path in pair]


def _train(args, rec) -> None:
    sizes = [64] if args.tiny else [4096, 8192]
    dtype = "float32" if args.tiny else "bfloat16"
    peak = matmul_peak(sizes, dtype=dtype)
    by_size = peak["matmul_gflops_by_size"]
    probe = matmul_probe(int(max(by_size, key=by_size.get)), dtype=dtype)
    baseline = {}
    for name, path, overrides in _train_cfgs(args):
        cfg = load_cfg(path, overrides)
        measured = measure_train(cfg, args.steps, 1, probe=probe)
        record = train_record(cfg, measured, peak)
        is_mta = cfg.model.attention.kq_pre.enabled
        ratio = record["tokens_per_s"] / baseline[name] if is_mta and name in baseline else None
        baseline.setdefault(name, record["tokens_per_s"])
        rec.emit({
            **record, "status": "ok", "config": path, "overrides": overrides,
            "name": f"{name} {'mta' if is_mta else 'baseline'}",
            "setting": f"B={record['batch_size']} T={record['seq_len']} {cfg.model.compute_dtype} "
                       f"{dtype} matmul peak; MFU {record['mfu']}",
            "value": record["tokens_per_s"], "unit": "tokens/s",
            "ratio": None if ratio is None else round(ratio, 3),
            "target": ">= 0.6 (MTA / baseline tokens/s)" if is_mta else None,
            "met": None if ratio is None else ratio >= 0.6,
        })  # fmt: skip


def _data_dir(args) -> str:
    if not args.data_dir:
        args.data_dir = tempfile.mkdtemp(prefix="mta-bench-data-")
    return args.data_dir


def loop_overhead(cfg, steps: int, workdir: str) -> dict:
    """Seconds per step of the real loop (the log record of its last `steps` steps, after
    `steps` that include the compile) and of the jitted step in a bare loop on the same
    batches (after the same warm-up), and the overhead loop / bare - 1."""
    import jax

    from mta.data import pipeline
    from mta.train.feed import to_device
    from mta.train.loop import train
    from mta.train.mesh import batch_sharding, make_mesh
    from mta.train.metrics import read_metrics
    from mta.train.state import TrainSetup
    from mta.train.step import make_train_step

    cfg = copy.deepcopy(cfg)
    cfg.train.steps, cfg.log.every, cfg.checkpoint.every = 2 * steps, steps, 10 * steps
    cfg.eval.every, cfg.eval.num_examples = 0, cfg.eval.batch_size
    cfg.log.tensorboard, cfg.log.progress = False, "off"
    train(cfg, workdir)
    loop_s = read_metrics(workdir)[-1]["step_time_s"]

    setup = TrainSetup(cfg, make_mesh(cfg.mesh))
    seq_len = pipeline.sequence_length(cfg.data)
    builder = pipeline.prepare(cfg.data)
    data = pipeline.train_iterator(builder, cfg.data, seq_len, cfg.train.batch_size, cfg.train.seed)
    sharding = batch_sharding(setup.mesh)
    batches = [to_device(next(data), sharding) for _ in range(2 * steps)]
    step_fn, state = make_train_step(setup), setup.init_state()
    for batch in batches[:steps]:
        state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    start = time.perf_counter()
    for batch in batches[steps:]:
        state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    bare_s = (time.perf_counter() - start) / steps
    return {"loop_step_s": loop_s, "bare_step_s": bare_s, "overhead": loop_s / bare_s - 1}


def _loop(args, rec) -> None:
    overrides = [f"data.data_dir={_data_dir(args)}", *TINY_DATA, "train.batch_size=8"]
    cfg = load_cfg(LOOP_CONFIG, [*TINY_MODEL, *overrides] if args.tiny else overrides)
    steps = 3 if args.tiny else args.loop_steps
    with tempfile.TemporaryDirectory(prefix="mta-bench-loop-") as workdir:
        result = loop_overhead(cfg, steps, workdir)
    rec.emit({
        **result, "status": "ok", "config": LOOP_CONFIG, "name": "train loop vs bare step",
        "setting": f"{steps} steps after {steps} warm-up; B={cfg.train.batch_size}",
        "value": round(100 * result["overhead"], 2), "unit": "% overhead",
        "ratio": round(result["loop_step_s"] / result["bare_step_s"], 4),
        "target": "<= 10% overhead", "met": result["overhead"] <= 0.10,
    })  # fmt: skip


def _decode(args, rec) -> None:
    if args.tiny:
        cases = [(path, [*TINY_MODEL], 32) for path in TINY_PAIR]
    else:
        cases = [(path, ["model.compute_dtype=bfloat16"], 4096) for path in TRAIN_PAIRS["small"]]
    steps = 3 if args.tiny else 50
    for path, overrides, context in cases:
        item = {"kind": "model_decode", "method": "model_cached", "config": path,
                "overrides": overrides, "context": context, "steps": steps}  # fmt: skip
        (result,) = run_child([item], args.timeout, 2**62)[:1]
        rec.emit({
            **item, **result, "name": f"{path.rsplit('/', 1)[-1]} cached", "unit": "tokens/s",
            "setting": f"B=1 context {context}", "value": result.get("tokens_per_s"),
        })  # fmt: skip


PARTS = {"attention": _attention, "train": _train, "loop": _loop, "decode": _decode}

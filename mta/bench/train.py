"""Tokens/s and MFU of full jitted training steps on random tokens (`mta bench train`).

Each step's MFU is against the float32 matmul GFLOP/s probed just before it (the fastest of the
--matmul-sizes), median over steps. Model FLOPs per sequence: 6 * params * T + 12 * layers * T^2 *
(H * head_dim) / 2; MTA's convolution and mixing FLOPs are reported apart.
"""

import statistics
import time

from mta.bench.harness import Recorder, load_cfg, matmul_peak, matmul_probe, timing_fields

DEFAULT_CONFIGS = ("configs/toy/block_mta_cpu.yaml", "configs/toy/block_baseline_cpu.yaml")
COLUMNS = [  # (markdown header, record key)
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
]


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
    """Wall times of the loop's jitted train step (mta.train.step.make_train_step) on one batch
    (default: synthetic_batch); the first call, which compiles, is timed apart. With `probe`
    (matmul_probe), the matmul GFLOP/s just before each timed step too ("peaks")."""
    import jax

    from mta.data import pipeline
    from mta.model import count_params
    from mta.train.mesh import batch_sharding, make_mesh
    from mta.train.state import TrainSetup
    from mta.train.step import make_train_step

    mesh = make_mesh(cfg.mesh)
    setup = TrainSetup(cfg, mesh)
    seq_len = pipeline.sequence_length(cfg.data)
    step_fn = make_train_step(setup)
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
    steps of the step's model GFLOP/s over the matmul GFLOP/s probed just before it: a shared
    machine's matmul speed drifts within one run (docs/benchmarks.md has the readings), so a
    peak measured once, apart from the steps, would misstate the MFU of the steps."""
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


def run(args, rec: Recorder) -> None:
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

"""Per-token decoding latency: cached (incremental) vs recomputed attention, at attention
level and optionally through mta.eval.generate's Generator (`mta bench decode`).

Attention level: baseline = attend_step + commit without kernels; mta_incremental = the same with
the release MTA kernels and a cache of CONTEXT positions; mta_recompute = recompute_step (the full
dense T x T maps per token). Targets: incremental <= 2x baseline; >= 10x faster than recompute at
4096. --model-config adds mta.eval.generate.Generator (cached and use_cache=False). Each context
runs in a fresh subprocess.
"""

import statistics

from mta.bench.attention import release_kernels
from mta.bench.harness import (
    Recorder,
    dense_too_big,
    max_memory_bytes,
    random_normal,
    resolve_config,
    run_child,
    time_calls,
    timing_fields,
)

METHODS = ("baseline", "mta_incremental", "mta_recompute")
MODEL_METHODS = ("model_cached", "model_recompute")
RECOMPUTE_MAPS = 3  # float32 [B, H, T, T] maps alive in a forward-only recompute
COLUMNS = [  # (markdown header, record key)
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
]


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


def measure(item: dict) -> dict:
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


def measure_model(item: dict) -> dict:
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
    from mta.resolve import resolve_model

    cfg = load_config(resolve_config(item["config"]), item["overrides"])
    gen = Generator(Transformer(resolve_model(cfg.model), nnx.Rngs(0)))
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


def run(args, rec: Recorder) -> None:
    """Per context: the attention-level methods in one subprocess; then per model context the
    model-level methods in another; then the target ratios."""
    max_bytes = max_memory_bytes(args.max_memory_gb)
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
        id(item): dense_too_big(RECOMPUTE_MAPS, item["B"], item["H"], item["context"], max_bytes)
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

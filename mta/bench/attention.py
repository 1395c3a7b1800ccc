"""Forward+backward time and peak memory of attention variants vs sequence length, each
configuration in a fresh subprocess (`mta bench attention`).

Variants: jax_dpa = jax.nn.dot_product_attention (is_causal=True), the reference of every ratio;
baseline = causal_attention; mta_pre = kq conv 6x11 before the softmax; mta_full = the release
setting (kq conv 6x11 pre and post, linear pre mixing, grouped post mixing over all heads, gated
group norm); talking_heads = grouped pre and post mixing over all heads; diff =
differential_attention with H/2 heads. Impls: dense, blockwise, pallas
(multi_token_attention(impl=...); the O(T) ones 'unavailable' if they raise; not for jax_dpa or
diff).
A row stops at its first oom/timeout/error.
"""

import os

from mta.bench.harness import (
    Recorder,
    dense_too_big,
    max_memory_bytes,
    peak_rss_mb,
    random_normal,
    rss_bytes,
    run_child,
    time_calls,
    timing_fields,
)

VARIANTS = ("jax_dpa", "baseline", "mta_pre", "mta_full", "talking_heads", "diff")
REFERENCE = "jax_dpa"  # jax.nn.dot_product_attention: the yardstick of every ratio
CUDNN = "jax_dpa_cudnn"  # its cuDNN kernel in bfloat16, run by `bench accelerator` on a GPU
BLOCKWISE_VARIANTS = ("baseline", "mta_pre", "mta_full", "talking_heads")
LINEAR_IMPLS = ("blockwise", "pallas")  # O(T) memory: never skipped as too big, MTA variants only
RELEASE_CONV = (6, 11)  # c_q x c_k of the release's pre and post key-query convolutions
# Rough number of float32 [B, H, T, T] maps alive at once in a dense implementation (forward +
# backward): a lower bound used only to skip configurations that cannot fit.
LIVE_MAPS = {"jax_dpa": 3, "baseline": 3, "mta_pre": 5, "mta_full": 8, "talking_heads": 5,
             "diff": 5, CUDNN: 2}  # fmt: skip
COLUMNS = [  # (markdown header, record key)
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
]


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


def attention_inputs(variant: str, B: int, T: int, H: int, D: int, dtype: str = "float32") -> dict:
    """Random q, k, v in dtype and the variant's parameters (float32)."""
    import ml_dtypes
    import numpy as np

    c_q, c_k = RELEASE_CONV
    inputs = {name: random_normal(i, (B, T, H, D)) for i, name in enumerate("qkv")}
    if variant == "diff":  # H/2 DIFF heads: 2 * (H/2) half-heads of width D, values 2D
        inputs["v"] = random_normal(2, (B, T, H // 2, 2 * D))
        inputs["lam"] = np.float32(0.5)
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
    wanted = np.dtype(getattr(ml_dtypes, dtype, dtype))
    return inputs | {name: inputs[name].astype(wanted) for name in "qkv"}


def attention_fn(variant: str, impl: str):
    """inputs dict -> attention output [B, T, H, D] (for mta_full after gated group norm)."""
    import jax

    from mta.attention import differential_attention, multi_token_attention
    from mta.model import rms_norm

    kernel_names = ("kq_pre", "head_pre", "kq_post", "head_post")

    def fn(x: dict):
        if variant == "jax_dpa":
            return jax.nn.dot_product_attention(x["q"], x["k"], x["v"], is_causal=True)
        if variant == CUDNN:  # bfloat16 (what cuDNN's fused kernel takes), GPU only
            q, k, v = (x[name].astype("bfloat16") for name in "qkv")
            out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
            return out.astype("float32")
        if variant == "diff":
            return differential_attention(x["q"], x["k"], x["v"], x["lam"])
        kernels = {name: x.get(name) for name in kernel_names}
        out = multi_token_attention(x["q"], x["k"], x["v"], **kernels, impl=impl)
        if variant != "mta_full":
            return out
        # group norm with scalar sigmoid gating, as Attention._norm in mta/model.py
        normed = rms_norm(out, x["out_norm"], 1e-5)
        gated = normed * jax.nn.sigmoid(normed @ x["gate_w"] + x["gate_b"])[..., None]
        return gated.astype(out.dtype)

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


def measure(item: dict) -> dict:
    """Child side: compile, time forward+backward, read memory. Runs in a fresh process.

    peak_rss_mb is the process's lifetime peak (imports, compile, run); rss_increase_mb is
    that peak minus the resident size just before the first call (0 when compiling peaked
    higher than running); xla_temp_mb is XLA's own temp-buffer size of the program."""
    import jax

    B, T, H, D = item["B"], item["T"], item["H"], item["D"]
    inputs = attention_inputs(item["variant"], B, T, H, D, item.get("dtype", "float32"))
    step = attention_step(item["variant"], item["impl"])
    out = jax.eval_shape(attention_fn(item["variant"], item["impl"]), inputs)
    cotangent = random_normal(99, out.shape).astype(out.dtype)
    compiled = jax.jit(step).lower(inputs, cotangent).compile()
    rss_before = rss_bytes(os.getpid()) / 2**20
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


def run(args, rec: Recorder) -> None:
    """T outer, variants inner (the reference first), so the ratios at one T share conditions."""
    max_bytes = max_memory_bytes(args.max_memory_gb)
    rows = [(REFERENCE, "xla")] if REFERENCE in args.variants else []
    rows += [
        (variant, impl)
        for variant in args.variants
        if variant != REFERENCE
        for impl in (["cudnn"] if variant == CUDNN else args.impls)
        if impl not in LINEAR_IMPLS or variant in BLOCKWISE_VARIANTS
    ]
    stopped = set()
    for variant, impl in rows:
        reason = attention_available(variant, impl, args.heads) if impl in LINEAR_IMPLS else None
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
                "dtype": args.dtype,
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
    if item["impl"] not in LINEAR_IMPLS:
        live_maps = LIVE_MAPS[item["variant"]]
        too_big = dense_too_big(live_maps, item["B"], item["H"], item["T"], max_bytes)
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

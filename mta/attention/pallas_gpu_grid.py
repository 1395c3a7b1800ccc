"""Plumbing of the Triton-shaped MTA kernels (pallas_gpu.py, pallas_gpu_backward.py): the padded
head-major layout of the inputs and a pallas_call over a (batch, block, head group) grid.

Each program gets its batch row of every input whole (Triton reads windows from memory at any
offset, so no block of the time axis is cut out for it) and the MTA weights whole; it writes one
block of each output, indexed by (batch, head group, block).
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from mta.attention.kernels import dense_mixing
from mta.attention.pallas_gpu_tiles import Layout, Tiles

# Triton's launch options for every kernel (the Triton IR does not depend on them)
NUM_WARPS, NUM_STAGES = 4, 2
# the MTA weights (argument name -> kernel ref name), passed whole; every other input gives a
# program its batch row
WEIGHTS = {"kq_pre": "theta", "head_pre": "mix", "kq_post": "theta_post", "head_post": "mix_post"}


def padded_inputs(lay: Layout, q, k, v, weights: dict, segment_ids) -> dict:
    """The kernels' inputs: q [B, H, rows, D], k / v [B, K, cols, D] zero-padded (Layout),
    seg_q [B, rows] / seg_k [B, cols] padded with -1 (no document, so a tile touching padding
    is never clean), and of weights (kq_pre, head_pre, kq_post, head_post) theta / theta_post
    [H, c_q, c_k] and mix / mix_post [H, H] (dense) in float32."""
    rows, cols = lay.row_padding, lay.col_padding
    out = {"q": pad_time(jnp.swapaxes(q, 1, 2), rows)}
    out["k"], out["v"] = (pad_time(jnp.swapaxes(x, 1, 2), cols) for x in (k, v))
    if lay.segments:
        out["seg_q"] = jnp.pad(segment_ids, ((0, 0), rows), constant_values=-1)
        out["seg_k"] = jnp.pad(segment_ids, ((0, 0), cols), constant_values=-1)
    for name, key in WEIGHTS.items():
        if weights[name] is not None:
            w = weights[name].astype(jnp.float32)
            out[key] = w if name.startswith("kq") else dense_mixing(w)
    return out


def zero_heads(refs, count: int):
    """Zeroes ref[t] for t < count of each output ref [G, ...] a kernel adds to (None:
    skipped)."""
    for ref in refs:
        if ref is not None:
            for t in range(count):
                ref[t] = jnp.zeros(ref.shape[1:], ref.dtype)


def pad_time(x, widths, value=0.0):
    """Pads axis 2 of [B, H, T, ...] by widths = (before, after)."""
    pads = [(0, 0)] * x.ndim
    pads[2] = widths
    return jnp.pad(x, pads, constant_values=value)


def scratch_spec(lay: Layout, batch: int, num_blocks: int):
    """The output a program stages the post conv's window in (pallas_gpu_window.py):
    [G, bq + M, bk + 2M]."""
    rows, cols = lay.block_q + lay.margin, lay.block_k + 2 * lay.margin
    shape = (batch, num_blocks, lay.heads, rows, cols)
    return shape, jnp.float32, (None, None, lay.group, rows, cols), lambda b, i, g: (b, i, g, 0, 0)


def call(lay: Layout, kernel, key_major: bool, inputs: dict, outputs: list, name: str):
    """pallas_call of kernel(tiles, block start, heads, *out_refs) over the grid (B, blocks,
    head groups), blocks the query blocks (or key blocks when key_major). outputs: (shape,
    dtype, block shape) with the batch dim squeezed, block index (b, head group, block)."""
    num = lay.num_kb if key_major else lay.num_qb
    specs = []
    for key, x in inputs.items():
        if key in WEIGHTS.values():
            specs.append(pl.BlockSpec(x.shape, lambda b, i, g, n=x.ndim: (0,) * n))
        else:
            specs.append(
                pl.BlockSpec((None, *x.shape[1:]), lambda b, i, g, n=x.ndim: (b,) + (0,) * (n - 1))
            )
    names = list(inputs)
    block = lay.block_k if key_major else lay.block_q
    batch = inputs["q"].shape[0]
    if lay.staged_heads:  # the z and work scratch of pallas_gpu_heads: [G, bq, bk] per program
        shape = (batch, num, lay.heads, lay.block_q, lay.block_k)
        block_shape = (None, None, lay.group, lay.block_q, lay.block_k)
        buffer = (shape, jnp.float32, block_shape, lambda b, i, g: (b, i, g, 0, 0))
        outputs = [*outputs, buffer, buffer]

    def body(*refs):
        tile_refs = dict(zip(names, refs[: len(names)], strict=True))
        out_refs = list(refs[len(names) :])
        if lay.staged_heads:
            tile_refs["work"], tile_refs["z_scratch"] = out_refs.pop(), out_refs.pop()
        heads = [pl.program_id(2) * lay.group + t for t in range(lay.group)]
        kernel(Tiles(lay, tile_refs), pl.program_id(1) * block, heads, *out_refs)

    results = pl.pallas_call(
        body,
        out_shape=[jax.ShapeDtypeStruct(shape, dtype) for shape, dtype, _, _ in outputs],
        grid=(batch, num, lay.heads // lay.group),
        in_specs=specs,
        out_specs=[pl.BlockSpec(block_shape, index) for _, _, block_shape, index in outputs],
        interpret=lay.interpret,
        compiler_params=pl_triton.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES),
        name=name,
    )(*inputs.values())
    return results[:-2] if lay.staged_heads else results


def lower_for_cuda(fn, *args) -> tuple:
    """jax.jit(fn) traced with args (arrays or ShapeDtypeStructs) and lowered for CUDA, on any
    machine -> (the Lowered, the Triton modules Pallas built for it). No GPU needed; compiling
    the modules to PTX does."""
    from jax._src.pallas.triton import lowering  # where Pallas builds the Triton module

    modules = []
    build = lowering.lower_jaxpr_to_triton_module

    def capture(*a, **k):
        result = build(*a, **k)
        modules.append(result.module)
        return result

    lowering.lower_jaxpr_to_triton_module = capture
    try:
        lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
    finally:
        lowering.lower_jaxpr_to_triton_module = build
    return lowered, modules

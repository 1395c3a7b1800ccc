"""Plumbing shared by the Pallas MTA kernels: the padded head-major layout of the inputs and a
pallas_call over a (batch, block, block) grid whose kernels see their windows through Tiles.

A program (b, i, j) of a query-major grid works on query block i and key block j (a key-major
grid, the backward's dkv kernel, swaps them; its innermost axis then runs over query blocks).
Each input reaches the program as an overlapping window (pl.Element) of its padded time axis:
the query-indexed arrays as rows qb * block_q - pad_rows .. (window_rows of them), the
key-indexed ones as columns kb * block_k - pad_cols .. (window_cols), so the grid pipelines one
window per step instead of holding whole rows. Outputs stay resident across the innermost axis
and accumulate there.
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mta.attention.pallas_tiles import Geometry, Tiles

# time axis of each windowed input; the query-indexed ones, then the key-indexed ones
ROW_AXES = {"q": 2, "d_out": 2, "m": 2, "l": 2, "delta": 2, "seg_q": 1}
COL_AXES = {"k": 2, "v": 2, "seg_k": 2}


def padded_inputs(geo: Geometry, q, k, v, segment_ids) -> dict:
    """Head-major inputs padded so every window is in range: q [B, H, rows_padded, D], k / v
    [B, K, cols_padded, D], segment ids [B, rows_padded, 1] / [B, 1, cols_padded] (-1 outside)."""
    below = geo.rows_padded - geo.pad_rows - geo.num_t
    right = geo.cols_padded - geo.pad_cols - geo.num_s
    rows, cols = (geo.pad_rows, below), (geo.pad_cols, right)
    out = {
        "q": pad_time(jnp.swapaxes(q, 1, 2), rows),
        "k": pad_time(jnp.swapaxes(k, 1, 2), cols),
        "v": pad_time(jnp.swapaxes(v, 1, 2), cols),
    }
    if segment_ids is not None:
        out["seg_q"] = jnp.pad(segment_ids, ((0, 0), rows), constant_values=-1)[:, :, None]
        out["seg_k"] = jnp.pad(segment_ids, ((0, 0), cols), constant_values=-1)[:, None, :]
    return out


def pad_time(x, widths, value=0.0):
    """Pads axis 2 of [B, H, T, ...] by widths = (before, after)."""
    pads = [(0, 0)] * x.ndim
    pads[2] = widths
    return jnp.pad(x, pads, constant_values=value)


def call(geo: Geometry, kernel, key_major: bool, inputs: dict, whole: dict, out_shapes, out_specs):
    """pallas_call of kernel(tiles, qb, kb, *out_refs) over the grid (B, num_qb, num_kb) (or
    (B, num_kb, num_qb) when key_major); inputs are windowed (ROW_AXES / COL_AXES), `whole`
    (the MTA kernels) passed whole; out_specs index blocks by (b, grid axis 1)."""
    rows, cols = geo.window_rows, geo.window_cols

    def blocks(i, j):  # (query block, key block) of grid indices (i, j)
        return (j, i) if key_major else (i, j)

    def window_spec(x, axis: int, size: int, start):
        # every dimension an Element (the TPU lowering takes all or none); offsets in elements
        shape = [None, *(pl.Element(n) for n in x.shape[1:])]
        shape[axis] = pl.Element(size)

        def index(b, i, j):
            offsets = [b] + [0] * (x.ndim - 1)
            offsets[axis] = start(*blocks(i, j))
            return tuple(offsets)

        return pl.BlockSpec(tuple(shape), index)

    specs = []
    for name, x in inputs.items():
        if name in ROW_AXES:
            specs.append(window_spec(x, ROW_AXES[name], rows, lambda qb, kb: qb * geo.block_q))
        else:
            specs.append(window_spec(x, COL_AXES[name], cols, lambda qb, kb: kb * geo.block_k))
    specs += [pl.BlockSpec(x.shape, lambda b, i, j, n=x.ndim: (0,) * n) for x in whole.values()]
    names = list(inputs) + list(whole)

    def body(*refs):
        qb, kb = blocks(pl.program_id(1), pl.program_id(2))
        tiles = Tiles(geo, dict(zip(names, refs[: len(names)], strict=True)), qb, kb)
        kernel(tiles, qb, kb, *refs[len(names) :])

    batch = inputs["q"].shape[0]
    grid = (batch, geo.num_kb, geo.num_qb) if key_major else (batch, geo.num_qb, geo.num_kb)
    return pl.pallas_call(
        body,
        out_shape=out_shapes,
        grid=grid,
        in_specs=specs,
        out_specs=out_specs,
        interpret=geo.interpret,
        name=kernel.__name__,
    )(*inputs.values(), *whole.values())


def per_block(batch: int, num_blocks: int, shape: tuple):
    """(out_shape, BlockSpec) of a float32 output [B, num_blocks, *shape] that programs
    (b, i, *) accumulate in [b, i] (whole trailing dims: every lowering accepts such a block)."""
    out = jax.ShapeDtypeStruct((batch, num_blocks, *shape), jnp.float32)
    spec = pl.BlockSpec((None, None, *shape), lambda b, i, j: (b, i) + (0,) * len(shape))
    return out, spec


def merge_blocks(x):
    """[B, N, H, R, ...] -> [B, H, N * R, ...]: the blocks of per_block along the time axis."""
    x = jnp.moveaxis(x, 1, 2)
    return x.reshape(x.shape[0], x.shape[1], -1, *x.shape[4:])

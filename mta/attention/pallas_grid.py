"""Plumbing shared by the Pallas MTA kernels: the padded head-major layout of the inputs and a
pallas_call over a (batch, block) grid whose kernels see the per-batch refs through Tiles."""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mta.attention.pallas_tiles import Geometry, Tiles


def padded_inputs(geo: Geometry, q, k, v, segment_ids) -> dict:
    """Head-major inputs padded so every window is in range: q [B, H, rows_padded, D], k / v
    [B, K, cols_padded, D], segment ids [B, rows_padded] / [B, cols_padded] (-1 outside)."""
    below = geo.rows_padded - geo.pad_rows - geo.num_t
    right = geo.cols_padded - geo.pad_cols - geo.num_s
    rows, cols = (geo.pad_rows, below), (geo.pad_cols, right)
    out = {
        "q": pad_time(jnp.swapaxes(q, 1, 2), rows),
        "k": pad_time(jnp.swapaxes(k, 1, 2), cols),
        "v": pad_time(jnp.swapaxes(v, 1, 2), cols),
    }
    if segment_ids is not None:
        out["seg_q"] = jnp.pad(segment_ids, ((0, 0), rows), constant_values=-1)
        out["seg_k"] = jnp.pad(segment_ids, ((0, 0), cols), constant_values=-1)
    return out


def pad_time(x, widths, value=0.0):
    """Pads axis 2 of [B, H, T, ...] by widths = (before, after)."""
    pads = [(0, 0)] * x.ndim
    pads[2] = widths
    return jnp.pad(x, pads, constant_values=value)


def batch_spec(x) -> pl.BlockSpec:
    """One batch row of x, whole, for every program of a (batch, block) grid."""
    return pl.BlockSpec((None, *x.shape[1:]), lambda b, i: (b,) + (0,) * (x.ndim - 1))


def whole_spec(x) -> pl.BlockSpec:
    return pl.BlockSpec(x.shape, lambda b, i: (0,) * x.ndim)


def call(geo: Geometry, kernel, grid, inputs: dict, whole: dict, out_shapes, out_specs):
    """pallas_call of kernel(tiles, *out_refs) with per-batch inputs and whole kernel arrays;
    the kernel receives a Tiles over refs named like `inputs` and `whole`."""
    names = list(inputs) + list(whole)
    specs = [batch_spec(x) for x in inputs.values()] + [whole_spec(x) for x in whole.values()]

    def body(*refs):
        tiles = Tiles(geo, dict(zip(names, refs[: len(names)], strict=True)))
        kernel(tiles, *refs[len(names) :])

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
    """(out_shape, BlockSpec) of a float32 output [B, num_blocks, *shape] that program (b, i)
    writes [b, i] of (whole trailing dims: every lowering accepts such a block)."""
    out = jax.ShapeDtypeStruct((batch, num_blocks, *shape), jnp.float32)
    spec = pl.BlockSpec((None, None, *shape), lambda b, i: (b, i) + (0,) * len(shape))
    return out, spec


def merge_blocks(x):
    """[B, N, H, R, ...] -> [B, H, N * R, ...]: the blocks of per_block along the time axis."""
    x = jnp.moveaxis(x, 1, 2)
    return x.reshape(x.shape[0], x.shape[1], -1, *x.shape[4:])

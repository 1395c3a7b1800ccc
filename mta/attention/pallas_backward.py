"""The backward of the Pallas MTA kernels (pallas_mta.py): three kernels that recompute the
tiles from q, k, v and the forward's row statistics (m, l), all in gather form (each program
writes only its own block, so no two programs write one place):

    delta  grid (B, query blocks): delta_i = sum_j P_ij dP_ij, the softmax backward's row term
           (dP: the gradient w.r.t. the probabilities through post mixing and the post conv);
    dq     grid (B, query blocks): dq = dx @ k over the block's key blocks, and this block's
           share of the gradients of every MTA kernel (summed over blocks outside);
    dkv    grid (B, key blocks): dk = dx^T @ q and dv = A^T @ d_out over the query blocks that
           see the key block.

dx(tile) reads dy on c_q - 1 more rows below and r more columns each side (the transposed pre
conv), and dy = P (dP - delta) reads dA on c_q' - 1 more rows below and r' more columns each side
(the transposed post conv); pallas_tiles.Tiles computes each on the window it needs.
"""

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mta.attention.pallas_grid import call, merge_blocks, pad_time, per_block
from mta.attention.pallas_tiles import Geometry, Tiles


def delta_kernel(tiles: Tiles, delta_ref):
    """delta of the rows of query block program_id(1): [H, block_q]."""
    geo = tiles.geo
    qb = pl.program_id(1)
    i0 = qb * geo.block_q

    def step(kb, acc):
        j0 = kb * geo.block_k
        p = tiles.probs(i0, geo.block_q, j0, geo.block_k)
        d_p = tiles.d_probs(i0, geo.block_q, j0, geo.block_k)
        return acc + jnp.sum(p * d_p, axis=2)

    init = jnp.zeros((geo.heads, geo.block_q), jnp.float32)
    delta_ref[...] = lax.fori_loop(0, geo.key_block_end(qb), step, init)


def param_grads(tiles: Tiles, i0, j0, d_y, d_z) -> dict:
    """The MTA kernels' gradients from tile (i0, j0) (dense [H, H] form for the mixing), given
    the tile's dy and dz (Tiles.d_scores)."""
    geo = tiles.geo
    n_r, n_c = geo.block_q, geo.block_k
    grads = {}
    if geo.kq_pre or geo.mix_pre:
        x0, z, _ = tiles.pre(i0, n_r, j0, n_c)
        if geo.mix_pre:
            grads["mix_pre"] = tiles.mix_grad(d_y, z)
        if geo.kq_pre:
            grads["kq_pre"] = tiles.conv_grad(d_z, x0, "kq_pre", i0, n_r, n_c)
    if geo.post:
        p, c, _ = tiles.post(i0, n_r, j0, n_c)
        d_a = tiles.d_weights(i0, n_r, j0, n_c)
        if geo.mix_post:
            grads["mix_post"] = tiles.mix_grad(d_a, c)
        if geo.kq_post:
            d_c = tiles.mix(d_a, "mix_post", transpose=True) if geo.mix_post else d_a
            grads["kq_post"] = tiles.conv_grad(d_c, p, "kq_post", i0, n_r, n_c)
    return grads


def dq_kernel(tiles: Tiles, dq_ref, *param_refs):
    """dq of query block program_id(1) [H, block_q, D] and its share of the kernels' grads."""
    geo = tiles.geo
    qb = pl.program_id(1)
    i0 = qb * geo.block_q
    names = sorted(
        name for name in ("kq_pre", "mix_pre", "kq_post", "mix_post") if name in tiles.refs
    )

    def step(kb, carry):
        acc, grads = carry
        j0 = kb * geo.block_k
        d_x, d_y, d_z = tiles.d_scores(i0, geo.block_q, j0, geo.block_k)
        k = tiles.refs["k"][:, tiles.cols(j0, geo.block_k), :].astype(jnp.float32)
        acc = acc + tiles.head_matmul(d_x, k)
        tile_grads = param_grads(tiles, i0, j0, d_y, d_z)
        return acc, {name: grads[name] + tile_grads[name] for name in names}

    init = (
        jnp.zeros((geo.heads, geo.block_q, geo.dim), jnp.float32),
        {name: jnp.zeros(tiles.refs[name].shape, jnp.float32) for name in names},
    )
    acc, grads = lax.fori_loop(0, geo.key_block_end(qb), step, init)
    dq_ref[...] = acc
    for name, ref in zip(names, param_refs, strict=True):
        ref[...] = grads[name]


def dkv_kernel(tiles: Tiles, dk_ref, dv_ref):
    """dk and dv of key block program_id(1): [K, block_k, D] each."""
    geo = tiles.geo
    kb = pl.program_id(1)
    j0 = kb * geo.block_k

    def step(qb, acc):
        d_k, d_v = acc
        i0 = qb * geo.block_q
        d_x, _, _ = tiles.d_scores(i0, geo.block_q, j0, geo.block_k)
        a = tiles.weights(i0, geo.block_q, j0, geo.block_k)
        q = tiles.refs["q"][:, tiles.rows(i0, geo.block_q), :].astype(jnp.float32)
        d_o = tiles.refs["d_out"][:, tiles.rows(i0, geo.block_q), :].astype(jnp.float32)
        return d_k + tiles.kv_matmul(d_x, q), d_v + tiles.kv_matmul(a, d_o)

    zero = jnp.zeros((geo.kv_heads, geo.block_k, geo.dim), jnp.float32)
    d_k, d_v = lax.fori_loop(geo.query_block_start(kb), geo.num_qb, step, (zero, zero))
    dk_ref[...] = d_k
    dv_ref[...] = d_v


def backward(geo: Geometry, inputs: dict, params: dict):
    """inputs: padded q, k, v, d_out, m, l (and segment ids) as pallas_grid lays them out.
    -> dq [B, H, num_qb * block_q, D], dk / dv [B, K, num_kb * block_k, D] (float32) and the
    gradients of params (same keys and shapes)."""
    batch = inputs["q"].shape[0]
    grid_q, grid_k = (batch, geo.num_qb), (batch, geo.num_kb)
    row_shape, row_spec = per_block(batch, geo.num_qb, (geo.heads, geo.block_q))
    delta = merge_blocks(call(geo, delta_kernel, grid_q, inputs, params, row_shape, row_spec))
    inputs = {**inputs, "delta": pad_time(delta, (geo.pad_rows, geo.pad_rows))}

    names = sorted(params)
    outs = [per_block(batch, geo.num_qb, (geo.heads, geo.block_q, geo.dim))]
    outs += [per_block(batch, geo.num_qb, params[n].shape) for n in names]
    dq, *partials = call(geo, dq_kernel, grid_q, inputs, params, *zip(*outs, strict=True))
    d_params = {n: p.sum(axis=(0, 1)) for n, p in zip(names, partials, strict=True)}

    kv_shape, kv_spec = per_block(batch, geo.num_kb, (geo.kv_heads, geo.block_k, geo.dim))
    dk, dv = call(geo, dkv_kernel, grid_k, inputs, params, (kv_shape,) * 2, (kv_spec,) * 2)
    return merge_blocks(dq), merge_blocks(dk), merge_blocks(dv), d_params

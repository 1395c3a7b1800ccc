"""The backward of the Pallas MTA kernels (pallas_mta.py): three kernels that recompute the
tiles from q, k, v and the forward's row statistics (m, l), all in gather form (programs that
differ outside the innermost grid axis never write one place; that axis accumulates):

    delta  grid (B, query blocks, key blocks): delta_i = sum_j P_ij dP_ij, the softmax
           backward's row term (dP: the gradient w.r.t. the probabilities through post mixing
           and the post conv);
    dq     grid (B, query blocks, key blocks): dq = dx @ k, and the query block's share of the
           gradients of every MTA kernel (summed over blocks outside);
    dkv    grid (B, key blocks, query blocks): dk = dx^T @ q and dv = A^T @ d_out.

dx(tile) reads dy on c_q - 1 more rows below and r more columns each side (the transposed pre
conv), and dy = P (dP - delta) reads dA on c_q' - 1 more rows below and r' more columns each side
(the transposed post conv); pallas_tiles.Tiles computes each on the window it needs.
"""

import jax.numpy as jnp
from jax.experimental import pallas as pl

from mta.attention.pallas_grid import call, merge_blocks, pad_time, per_block
from mta.attention.pallas_tiles import Geometry, Tiles


def delta_kernel(tiles: Tiles, qb, kb, delta_ref):
    """delta of the rows of query block qb, accumulated over the key blocks: [H, block_q, 1]."""
    geo = tiles.geo
    i0, j0 = qb * geo.block_q, kb * geo.block_k

    @pl.when(kb == 0)
    def _init():
        delta_ref[...] = jnp.zeros(delta_ref.shape, jnp.float32)

    @pl.when(kb < geo.key_block_end(qb))
    def _step():
        p = tiles.probs(i0, geo.block_q, j0, geo.block_k)
        d_p = tiles.d_probs(i0, geo.block_q, j0, geo.block_k)
        delta_ref[...] += jnp.sum(p * d_p, axis=2, keepdims=True)


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


def dq_kernel(tiles: Tiles, qb, kb, dq_ref, *param_refs):
    """dq of query block qb [H, block_q, D] and its share of the kernels' gradients,
    accumulated over the key blocks."""
    geo = tiles.geo
    i0, j0 = qb * geo.block_q, kb * geo.block_k
    names = sorted(n for n in ("kq_pre", "mix_pre", "kq_post", "mix_post") if n in tiles.refs)

    @pl.when(kb == 0)
    def _init():
        for ref in (dq_ref, *param_refs):
            ref[...] = jnp.zeros(ref.shape, jnp.float32)

    @pl.when(kb < geo.key_block_end(qb))
    def _step():
        d_x, d_y, d_z = tiles.d_scores(i0, geo.block_q, j0, geo.block_k)
        k = tiles.refs["k"][:, tiles.cols(j0, geo.block_k), :].astype(jnp.float32)
        dq_ref[...] += tiles.head_matmul(d_x, k)
        grads = param_grads(tiles, i0, j0, d_y, d_z)
        for name, ref in zip(names, param_refs, strict=True):
            ref[...] += grads[name]


def dkv_kernel(tiles: Tiles, qb, kb, dk_ref, dv_ref):
    """dk and dv of key block kb, accumulated over the query blocks: [K, block_k, D] each."""
    geo = tiles.geo
    i0, j0 = qb * geo.block_q, kb * geo.block_k

    @pl.when(qb == 0)
    def _init():
        dk_ref[...] = jnp.zeros(dk_ref.shape, jnp.float32)
        dv_ref[...] = jnp.zeros(dv_ref.shape, jnp.float32)

    @pl.when(qb >= geo.query_block_start(kb))
    def _step():
        d_x, _, _ = tiles.d_scores(i0, geo.block_q, j0, geo.block_k)
        a = tiles.weights(i0, geo.block_q, j0, geo.block_k)
        q = tiles.refs["q"][:, tiles.rows(i0, geo.block_q), :].astype(jnp.float32)
        d_o = tiles.refs["d_out"][:, tiles.rows(i0, geo.block_q), :].astype(jnp.float32)
        dk_ref[...] += tiles.kv_matmul(d_x, q)
        dv_ref[...] += tiles.kv_matmul(a, d_o)


def backward(geo: Geometry, inputs: dict, params: dict):
    """inputs: padded q, k, v, d_out, m, l (and segment ids) as pallas_grid lays them out.
    -> dq [B, H, num_qb * block_q, D], dk / dv [B, K, num_kb * block_k, D] (float32) and the
    gradients of params (same keys and shapes)."""
    batch = inputs["q"].shape[0]
    row_shape, row_spec = per_block(batch, geo.num_qb, (geo.heads, geo.block_q, 1))
    delta = merge_blocks(call(geo, delta_kernel, False, inputs, params, row_shape, row_spec))
    inputs = {**inputs, "delta": pad_time(delta, geo.stats_padding)}

    names = sorted(params)
    outs = [per_block(batch, geo.num_qb, (geo.heads, geo.block_q, geo.dim))]
    outs += [per_block(batch, geo.num_qb, params[n].shape) for n in names]
    dq, *partials = call(geo, dq_kernel, False, inputs, params, *zip(*outs, strict=True))
    d_params = {n: p.sum(axis=(0, 1)) for n, p in zip(names, partials, strict=True)}

    kv_shape, kv_spec = per_block(batch, geo.num_kb, (geo.kv_heads, geo.block_k, geo.dim))
    dk, dv = call(geo, dkv_kernel, True, inputs, params, (kv_shape,) * 2, (kv_spec,) * 2)
    return merge_blocks(dq), merge_blocks(dk), merge_blocks(dv), d_params

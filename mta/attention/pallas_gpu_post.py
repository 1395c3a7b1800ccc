"""The post-softmax part of the Triton-shaped MTA kernels: key-query conv and head mixing of the
probabilities, A = mask_0(mix_post(conv_post(P))), their gradients, and the kernels that need
them. The conv reads P (and the backward dC) from a window staged in memory
(pallas_gpu_window.py). Row sums delta_i = sum_j P_ij dP_ij take a pass of their own
(post_delta_kernel), since with a post part the output is no longer P v. Programs of several
heads or with a head mixing run each step as loops over their heads (pallas_gpu_heads.py); the
functions here hold one head without mixing in registers.
"""

import jax.numpy as jnp
from jax import lax

from mta.attention.pallas_gpu_grid import zero_heads
from mta.attention.pallas_gpu_heads import HeadLoop
from mta.attention.pallas_gpu_tiles import Tiles, dot_nn, dot_tn
from mta.attention.pallas_gpu_window import conv_head, d_conv_head, stage, writer


def post_conv(tiles: Tiles, scratch, heads: list, i0, d_c=None):
    """conv_head of each program head: (C per head, d theta_post per head or None)."""
    pairs = [
        conv_head(tiles, scratch, t, g, i0, None if d_c is None else d_c[t])
        for t, g in enumerate(heads)
    ]
    return [c for c, _ in pairs], None if d_c is None else [vec for _, vec in pairs]


def weights(tiles: Tiles, scratch, heads: list, i0, j0):
    """Stages P above the tile -> (C per head, A = mask_0(C) per head): programs with a post
    mixing take pallas_gpu_heads.HeadLoop."""

    def probs(r0, n_r, c0, n_c):
        return tiles.probs(heads, r0, c0, n_r, n_c)

    stage(tiles, writer(scratch, probs), i0, j0, above=True)
    convs, _ = post_conv(tiles, scratch, heads, i0)
    keep = tiles.allowed(i0, j0)
    return convs, [jnp.where(keep, c, 0.0) for c in convs]


def d_probs(tiles: Tiles, scratch, heads: list, i0, j0) -> list:
    """dP = conv_post^T(dC), dC = mask(dO v^T) staged below: [bq, bk] per head (no post
    mixing, as in weights)."""

    def d_convs(r0, n_r, c0, n_c):
        return tiles.d_attention(heads, r0, c0, n_r, n_c)

    stage(tiles, writer(scratch, d_convs), i0, j0, above=False)
    return [d_conv_head(tiles, scratch, t, g, i0) for t, g in enumerate(heads)]


# --- kernels ---------------------------------------------------------------------------------


def post_out_kernel(tiles: Tiles, i0, heads, o_ref, scratch):
    """out = A v over the key blocks of query block i0: o_ref [G, bq, D]."""
    lay = tiles.lay
    if lay.staged_heads:
        zero_heads((o_ref,), len(heads))
        loop = HeadLoop(tiles, heads, scratch)
        _over_key_blocks(lay, i0, lambda j0: loop.out(i0, j0, o_ref))
        return

    def step(kb, acc):
        j0 = kb * lay.block_k
        _, a = weights(tiles, scratch, heads, i0, j0)
        v = [tiles.cols("v", h, j0) for h in heads]
        return tuple(
            o + dot_nn(a_h.astype(v_h.dtype), v_h) for o, a_h, v_h in zip(acc, a, v, strict=True)
        )

    zeros = tuple(jnp.zeros((lay.block_q, lay.dim), jnp.float32) for _ in heads)
    for t, o in enumerate(lax.fori_loop(0, lay.key_block_end(i0), step, zeros)):
        o_ref[t, :, :] = o


def post_delta_kernel(tiles: Tiles, i0, heads, delta_ref, scratch):
    """delta_i = sum_j P_ij dP_ij of query block i0: delta_ref [G, bq]."""
    lay = tiles.lay
    if lay.staged_heads:
        zero_heads((delta_ref,), len(heads))
        loop = HeadLoop(tiles, heads, scratch)
        _over_key_blocks(lay, i0, lambda j0: loop.delta(i0, j0, delta_ref))
        return

    def step(kb, acc):
        j0 = kb * lay.block_k
        d_p = d_probs(tiles, scratch, heads, i0, j0)
        p = tiles.probs(heads, i0, j0)
        return tuple(
            s + jnp.sum(p_g * d_g, axis=1) for s, p_g, d_g in zip(acc, p, d_p, strict=True)
        )

    zeros = tuple(jnp.zeros((lay.block_q,), jnp.float32) for _ in heads)
    for t, s in enumerate(lax.fori_loop(0, lay.key_block_end(i0), step, zeros)):
        delta_ref[t, :] = s


def post_dv_kernel(tiles: Tiles, j0, heads, dv_ref, *refs):
    """Key block j0 over the query blocks that see it: dv_ref [G, bk, D] (per query head), and
    the program's sums of d theta_post [G, P] and d mix_post [G, P'] (where present)."""
    lay = tiles.lay
    scratch = refs[-1]
    conv = lay.post_taps != (1, 1)
    d_theta_ref = refs[0] if conv else None
    d_mix_ref = refs[-2] if lay.mixing_post else None
    zero_heads((dv_ref, d_theta_ref, d_mix_ref), len(heads))

    def step(qb, carry):
        i0 = qb * lay.block_q
        if lay.staged_heads:
            HeadLoop(tiles, heads, scratch).post_grads(i0, j0, dv_ref, d_theta_ref, d_mix_ref)
            return carry
        d_c = tiles.d_attention(heads, i0, j0)  # = dA: no post mixing (staged_heads)

        def probs(r0, n_r, c0, n_c):
            return tiles.probs(heads, r0, c0, n_r, n_c)

        stage(tiles, writer(scratch, probs), i0, j0, above=True)
        convs, d_theta = post_conv(tiles, scratch, heads, i0, d_c if conv else None)
        keep = tiles.allowed(i0, j0)
        a = [jnp.where(keep, c, 0.0) for c in convs]
        for t, h in enumerate(heads):
            d_out = tiles.rows("d_out", h, i0)
            dv_ref[t, :, :] += dot_tn(a[t].astype(d_out.dtype), d_out)
            if conv:
                d_theta_ref[t, :] += d_theta[t]
        return carry

    lax.fori_loop(lay.query_block_start(j0), lay.num_qb, step, None)


def _over_key_blocks(lay, i0, step):
    """step(j0) over the key blocks query block i0 sees."""

    def body(kb, carry):
        step(kb * lay.block_k)
        return carry

    lax.fori_loop(0, lay.key_block_end(i0), body, None)

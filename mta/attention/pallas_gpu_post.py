"""The post-softmax part of the Triton-shaped MTA kernels: key-query conv and head mixing of the
probabilities, A = mask_0(mix_post(conv_post(P))), and their gradients.

The post conv reads P on c_q' - 1 rows above a tile and r' columns each side, and P is no input
but a recomputed tile. Triton cannot slice a value, so a program stages the window in memory (a
scratch output it owns), waits at a barrier, and reads the c_q' x c_k' shifted tiles back. The
window is cut into Triton-sized pieces: the tile, and margins M wide (M: a power of two >= 16
covering the halo):

        j0 - M      j0                     j0 + bk     j0 + bk + M
          +---------+----------------------+-----------+
          | M x M   |  M x bk              |  M x M    |   rows i0 - M ..    (above: P for A)
          +---------+----------------------+-----------+
          | bq x M  |  bq x bk: the tile   |  bq x M   |   rows i0 ..
          +---------+----------------------+-----------+

The backward stages dC = mix_post^T(mask(dO v^T)) the same way on M rows *below* (the transposed
conv reads rows i + s and columns j - d) and gets dP = conv_post^T(dC) from it. Row sums
delta_i = sum_j P_ij dP_ij take a pass of their own (post_delta_kernel), since with a post part
the output is no longer P v.
"""

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mta.attention.pallas_gpu_grid import clear_sums
from mta.attention.pallas_gpu_tiles import Tiles, barrier, dot_nn, dot_tn, pow2


def stage(tiles: Tiles, scratch, compute, i0, j0, above: bool):
    """Writes compute(row0, n_rows, col0, n_cols) -> [n_rows, n_cols] per program head over rows
    i0 - M .. i0 + bq (above) or i0 .. i0 + bq + M (below) and columns j0 - M .. j0 + bk + M
    into scratch [G, bq + M, bk + 2M], between barriers."""
    lay = tiles.lay
    bq, bk, m = lay.block_q, lay.block_k, lay.margin
    row_parts = [(i0 - m, m, 0), (i0, bq, m)] if above else [(i0, bq, 0), (i0 + bq, m, bq)]
    col_parts = [(j0 - m, m, 0), (j0, bk, m), (j0 + bk, m, m + bk)]
    barrier(lay)  # the previous step's reads are done
    for r0, n_r, at_r in row_parts:
        for c0, n_c, at_c in col_parts:
            if n_r and n_c:
                for t, piece in enumerate(compute(r0, n_r, c0, n_c)):
                    scratch[t, pl.ds(at_r, n_r), pl.ds(at_c, n_c)] = piece
    barrier(lay)


def post_conv(tiles: Tiles, scratch, heads: list, i0, j0, d_c=None):
    """C_g = conv_post(P_g) on the tile from P staged above: [bq, bk] per head; with d_c (the
    gradient w.r.t. C, per head) also d theta_post per head, taps flattened a * c_k' + b."""
    lay = tiles.lay
    bq, bk, m = lay.block_q, lay.block_k, lay.margin
    (c_q, c_k), r = lay.post_taps, lay.r_post
    if (c_q, c_k) == (1, 1):
        return [scratch[t, pl.ds(0, bq), pl.ds(0, bk)] for t in range(len(heads))], None
    slots = lax.broadcasted_iota(jnp.int32, (pow2(c_q * c_k),), 0)
    convs, grads = [], []
    for t, g in enumerate(heads):

        def row_tap(a, carry, t=t, g=g):
            s = c_q - 1 - a
            same_doc = tiles.same_doc(i0, s)

            def col_tap(b, carry):
                c, vec = carry
                p = jnp.where(same_doc, scratch[t, pl.ds(m - s, bq), pl.ds(m + b - r, bk)], 0.0)
                if d_c is not None:
                    vec = vec + jnp.where(slots == a * c_k + b, jnp.sum(d_c[t] * p), 0.0)
                return c + tiles.theta(g, a, b, "theta_post") * p, vec

            return lax.fori_loop(0, c_k, col_tap, carry)

        start = (jnp.zeros((bq, bk), jnp.float32), jnp.zeros(slots.shape, jnp.float32))
        c, vec = lax.fori_loop(0, c_q, row_tap, start)
        convs.append(c)
        grads.append(vec)
    return convs, grads if d_c is not None else None


def weights(tiles: Tiles, scratch, heads: list, i0, j0):
    """Stages P above the tile -> (C per head, A = mask_0(mix_post(C)) per head)."""

    def probs(r0, n_r, c0, n_c):
        return tiles.probs(heads, r0, c0, n_r, n_c)

    stage(tiles, scratch, probs, i0, j0, above=True)
    convs, _ = post_conv(tiles, scratch, heads, i0, j0)
    keep = tiles.allowed(i0, j0)
    return convs, [jnp.where(keep, a, 0.0) for a in tiles.mixed(heads, convs, "mix_post")]


def d_probs(tiles: Tiles, scratch, heads: list, i0, j0) -> list:
    """dP = conv_post^T(dC), dC = mix_post^T(mask(dO v^T)) staged below: [bq, bk] per head."""
    lay = tiles.lay
    bq, bk, m = lay.block_q, lay.block_k, lay.margin
    (c_q, c_k), r = lay.post_taps, lay.r_post

    def d_convs(r0, n_r, c0, n_c):
        return tiles.unmixed(heads, tiles.d_attention(heads, r0, c0, n_r, n_c), "mix_post")

    stage(tiles, scratch, d_convs, i0, j0, above=False)
    if (c_q, c_k) == (1, 1):
        return [scratch[t, pl.ds(0, bq), pl.ds(0, bk)] for t in range(len(heads))]
    out = []
    for t, g in enumerate(heads):

        def row_tap(a, acc, t=t, g=g):
            s = c_q - 1 - a
            same_doc = tiles.same_doc(i0 + s, s)  # rows i + s and i

            def col_tap(b, acc):
                d_c = scratch[t, pl.ds(s, bq), pl.ds(m - b + r, bk)]
                return acc + tiles.theta(g, a, b, "theta_post") * jnp.where(same_doc, d_c, 0.0)

            return lax.fori_loop(0, c_k, col_tap, acc)

        out.append(lax.fori_loop(0, c_q, row_tap, jnp.zeros((bq, bk), jnp.float32)))
    return out


# --- kernels ---------------------------------------------------------------------------------


def post_out_kernel(tiles: Tiles, i0, heads, o_ref, scratch):
    """out = A v over the key blocks of query block i0: o_ref [G, bq, D]."""
    lay = tiles.lay

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
    for t in range(len(heads)):
        dv_ref[t, :, :] = jnp.zeros((lay.block_k, lay.dim), jnp.float32)
    clear_sums((d_theta_ref, d_mix_ref), len(heads))

    def step(qb, carry):
        i0 = qb * lay.block_q
        d_a = tiles.d_attention(heads, i0, j0)
        d_c = tiles.unmixed(heads, d_a, "mix_post")

        def probs(r0, n_r, c0, n_c):
            return tiles.probs(heads, r0, c0, n_r, n_c)

        stage(tiles, scratch, probs, i0, j0, above=True)
        convs, d_theta = post_conv(tiles, scratch, heads, i0, j0, d_c if conv else None)
        keep = tiles.allowed(i0, j0)
        a = [jnp.where(keep, x, 0.0) for x in tiles.mixed(heads, convs, "mix_post")]
        for t, h in enumerate(heads):
            d_out = tiles.rows("d_out", h, i0)
            dv_ref[t, :, :] += dot_tn(a[t].astype(d_out.dtype), d_out)
            if conv:
                d_theta_ref[t, :] += d_theta[t]
            if lay.mixing_post:  # dW'[h, g] = sum dA_h C_g
                slots = lax.broadcasted_iota(jnp.int32, d_mix_ref.shape[-1:], 0)
                terms = [
                    jnp.where(slots == u, jnp.sum(d_a[t] * c), 0.0) for u, c in enumerate(convs)
                ]
                d_mix_ref[t, :] += sum(terms[1:], terms[0])

    lax.fori_loop(lay.query_block_start(j0), lay.num_qb, step, None)

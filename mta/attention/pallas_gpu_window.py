"""The post-softmax conv's staged window in the Triton-shaped MTA kernels, and the conv and its
transpose of one head read from it.

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
conv reads rows i + s and columns j - d) and gets dP = conv_post^T(dC) from it.
"""

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mta.attention.pallas_gpu_tiles import Tiles, barrier, pow2


def stage(tiles: Tiles, write, i0, j0, above: bool):
    """Calls write(r0, n_rows, c0, n_cols, at_r, at_c), which stores a piece of every program
    head's window, for the pieces of rows i0 - M .. i0 + bq (above) or i0 .. i0 + bq + M (below)
    and columns j0 - M .. j0 + bk + M, at (at_r, at_c) of the scratch [G, bq + M, bk + 2M],
    between barriers."""
    lay = tiles.lay
    bq, bk, m = lay.block_q, lay.block_k, lay.margin
    row_parts = [(i0 - m, m, 0), (i0, bq, m)] if above else [(i0, bq, 0), (i0 + bq, m, bq)]
    col_parts = [(j0 - m, m, 0), (j0, bk, m), (j0 + bk, m, m + bk)]
    barrier(lay)  # the previous step's reads are done
    for r0, n_r, at_r in row_parts:
        for c0, n_c, at_c in col_parts:
            if n_r and n_c:
                write(r0, n_r, c0, n_c, at_r, at_c)
    barrier(lay)


def writer(scratch, compute):
    """A stage() write that stores compute(r0, n_rows, c0, n_cols) -> one piece per head."""

    def write(r0, n_r, c0, n_c, at_r, at_c):
        for t, piece in enumerate(compute(r0, n_r, c0, n_c)):
            scratch[t, pl.ds(at_r, n_r), pl.ds(at_c, n_c)] = piece

    return write


def conv_head(tiles: Tiles, scratch, t, g, i0, d_c=None):
    """C = conv_post(P) of program head t (head g) on the tile, from P staged above: [bq, bk];
    with d_c [bq, bk] (the gradient w.r.t. C) also d theta_post [P] (taps flattened a * c_k'
    + b), else None."""
    lay = tiles.lay
    bq, bk, m = lay.block_q, lay.block_k, lay.margin
    (c_q, c_k), r = lay.post_taps, lay.r_post
    if (c_q, c_k) == (1, 1):
        return scratch[t, pl.ds(0, bq), pl.ds(0, bk)], None
    slots = lax.broadcasted_iota(jnp.int32, (pow2(c_q * c_k),), 0)

    def row_tap(a, carry):
        s = c_q - 1 - a
        same_doc = tiles.same_doc(i0, s)

        def col_tap(b, carry):
            c, vec = carry
            p = jnp.where(same_doc, scratch[t, pl.ds(m - s, bq), pl.ds(m + b - r, bk)], 0.0)
            if d_c is not None:
                vec = vec + jnp.where(slots == a * c_k + b, jnp.sum(d_c * p), 0.0)
            return c + tiles.theta(g, a, b, "theta_post") * p, vec

        return lax.fori_loop(0, c_k, col_tap, carry)

    start = (jnp.zeros((bq, bk), jnp.float32), jnp.zeros(slots.shape, jnp.float32))
    c, vec = lax.fori_loop(0, c_q, row_tap, start)
    return c, vec if d_c is not None else None


def d_conv_head(tiles: Tiles, scratch, t, g, i0):
    """dP = conv_post^T(dC) of program head t (head g), from dC staged below: [bq, bk]."""
    lay = tiles.lay
    bq, bk, m = lay.block_q, lay.block_k, lay.margin
    (c_q, c_k), r = lay.post_taps, lay.r_post
    if (c_q, c_k) == (1, 1):
        return scratch[t, pl.ds(0, bq), pl.ds(0, bk)]

    def row_tap(a, acc):
        s = c_q - 1 - a
        same_doc = tiles.same_doc(i0 + s, s)  # rows i + s and i

        def col_tap(b, acc):
            d_c = scratch[t, pl.ds(s, bq), pl.ds(m - b + r, bk)]
            return acc + tiles.theta(g, a, b, "theta_post") * jnp.where(same_doc, d_c, 0.0)

        return lax.fori_loop(0, c_k, col_tap, acc)

    return lax.fori_loop(0, c_q, row_tap, jnp.zeros((bq, bk), jnp.float32))

"""Tile math of the Triton-shaped MTA kernels (pallas_gpu.py, pallas_gpu_backward.py).

Triton takes no slice of a value held in registers, so every halo is a load from memory. Under the
key-query conv a tile's logits are a sum of products of q rows shifted up by s = c_q - 1 - a and k
columns shifted by d = b - r (r = (c_k - 1) // 2), each read at its offset. The inputs are
zero-padded (c_q - 1 rows above, r columns each side) so every read is in range, and a padded row
or column contributes the 0 that mask_0 asks for. Two ways to sum the products:

    clean tile    every shifted pair (i - s, j + d) causal and in one document: the conv moves
                  onto q, z = sum_b (sum_a theta[a, b] q[i - s_a]) . k[j + d_b]: c_k dots
    other tiles   (the diagonal band, document boundaries) each of the c_q * c_k products masked
                  on its own before it is added: c_q * c_k dots

                     <-r->|<------ block_k ------>|<-r->    query rows i0 - (c_q - 1) ..
        c_q - 1 rows      |  halo: shifted loads   |         i0 + block_q - 1 against key
        block_q rows      |  the tile's logits     |         columns j0 - r .. j0 + block_k + r - 1

The backward keeps the shifts on the load side too (pallas_gpu_backward.py). All tiles are 2-D
(one head at a time); a program holds the heads its head mixing joins.
"""

import functools
from dataclasses import dataclass

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


@dataclass(frozen=True)
class Layout:
    """Static shapes of one call."""

    num_t: int
    num_s: int
    heads: int
    kv_heads: int
    dim: int
    block_q: int
    block_k: int
    taps: tuple  # (c_q, c_k) of kq_pre; (1, 1) without it
    group: int  # heads in one program: the heads the pre mixing joins
    mixing: bool
    segments: bool
    interpret: bool

    @property
    def conv(self) -> bool:
        return self.taps != (1, 1)

    @property
    def offset(self) -> int:
        return self.num_s - self.num_t  # query i sits at key position i + offset

    @property
    def per_kv(self) -> int:
        return self.heads // self.kv_heads

    @property
    def num_qb(self) -> int:
        return -(-self.num_t // self.block_q)

    @property
    def num_kb(self) -> int:
        return -(-self.num_s // self.block_k)

    @property
    def pad_rows(self) -> int:
        return self.taps[0] - 1

    @property
    def pad_cols(self) -> int:
        return (self.taps[1] - 1) // 2

    @property
    def row_padding(self) -> tuple:
        """(above, below) that pad the T rows of q-like arrays."""
        return self.pad_rows, self.num_qb * self.block_q - self.num_t

    @property
    def col_padding(self) -> tuple:
        return self.pad_cols, self.num_kb * self.block_k - self.num_s + self.pad_cols

    def key_block_end(self, i0):
        """Key blocks 0 .. end - 1 hold every key the query block from row i0 may see."""
        return jnp.minimum(self.num_kb, (i0 + self.block_q - 1 + self.offset) // self.block_k + 1)

    def query_block_start(self, j0):
        """Query blocks start .. num_qb - 1 hold every query that may see key j0 on."""
        return jnp.maximum(j0 - self.offset, 0) // self.block_q


def dot(a, b):
    """a [n, x] @ b [m, x].T -> [n, m] float32."""
    return lax.dot_general(a, b, _NT, preferred_element_type=jnp.float32)


def dot_tn(a, b):
    """a [x, n].T @ b [x, m] -> [n, m] float32."""
    return lax.dot_general(a, b, _TN, preferred_element_type=jnp.float32)


def dot_nn(a, b):
    """a [n, x] @ b [x, m] -> [n, m] float32."""
    return lax.dot(a, b, preferred_element_type=jnp.float32)


class Tiles:
    """Loads, masks and logits of one program. refs: name -> ref of its batch row: q / d_out
    [H, rows, D], lse / delta [H, rows] (rows padded by Layout.row_padding), k / v [K, cols, D]
    (Layout.col_padding), seg_q [rows], seg_k [cols]; whole theta [H, c_q, c_k] and mix [H, H]."""

    def __init__(self, lay: Layout, refs: dict):
        self.lay, self.refs = lay, refs
        self.scale = lay.dim**-0.5

    # --- loads: block_q rows from global row i0 - s, block_k columns from global column j0 + d

    def rows(self, name: str, h, i0, s=0):
        ref = self.refs[name]
        window = pl.ds(i0 - s + self.lay.pad_rows, self.lay.block_q)
        return ref[h, window] if ref.ndim == 2 else ref[h, window, :]

    def cols(self, name: str, h, j0, d=0):
        """Key / value columns of query head h's kv head."""
        window = pl.ds(j0 + d + self.lay.pad_cols, self.lay.block_k)
        return self.refs[name][h // self.lay.per_kv, window, :]

    def seg_rows(self, i0, s=0):
        return self.refs["seg_q"][pl.ds(i0 - s + self.lay.pad_rows, self.lay.block_q)]

    def seg_cols(self, j0, d=0):
        return self.refs["seg_k"][pl.ds(j0 + d + self.lay.pad_cols, self.lay.block_k)]

    # --- masks

    def allowed(self, i0, j0, s=0, d=0):
        """[block_q, block_k]: may row i - s see column j + d (bounds, causal, document)."""
        lay = self.lay
        shape = (lay.block_q, lay.block_k)
        r = i0 - s + lax.broadcasted_iota(jnp.int32, shape, 0)
        c = j0 + d + lax.broadcasted_iota(jnp.int32, shape, 1)
        ok = (r >= 0) & (r < lay.num_t) & (c >= 0) & (c < lay.num_s) & (c <= r + lay.offset)
        if lay.segments:
            ok = ok & (self.seg_rows(i0, s)[:, None] == self.seg_cols(j0, d)[None, :])
        return ok

    def tap_mask(self, i0, j0, a, b):
        """Where conv tap (a, b) reads a product: allowed, and rows i - s and i in one document
        (query-axis taps read 0 across documents)."""
        s, d = self.lay.taps[0] - 1 - a, b - self.lay.pad_cols
        keep = self.allowed(i0, j0, s, d)
        if self.lay.segments:
            keep = keep & (self.seg_rows(i0) == self.seg_rows(i0, s))[:, None]
        return keep

    def is_clean(self, i0, j0):
        """Scalar bool: every tap product of the tile is unmasked (see the module docstring)."""
        lay = self.lay
        causal = i0 - (lay.taps[0] - 1) + lay.offset >= j0 + lay.block_k - 1 + lay.pad_cols
        if not lay.segments:
            return causal
        r = lay.pad_cols
        ids = (self.seg_rows(i0, lay.pad_rows), self.seg_rows(i0), self.seg_cols(j0, -r))
        ids += (self.seg_cols(j0, r),)
        lo = functools.reduce(jnp.minimum, [x.min() for x in ids])
        hi = functools.reduce(jnp.maximum, [x.max() for x in ids])
        return causal & (lo == hi)

    # --- the conv moved onto q or k (clean tiles)

    def q_conv(self, h, i0, b):
        """sum_a theta[h, a, b] q[i - s_a]: [block_q, D] float32."""
        c_q = self.lay.taps[0]
        taps = [self.theta(h, a, b) * self.rows("q", h, i0, c_q - 1 - a) for a in range(c_q)]
        return sum(taps[1:], taps[0])

    def k_conv(self, h, j0, a):
        """sum_b theta[h, a, b] k[j + d_b]: [block_k, D] float32."""
        c_k, r = self.lay.taps[1], self.lay.pad_cols
        taps = [self.theta(h, a, b) * self.cols("k", h, j0, b - r) for b in range(c_k)]
        return sum(taps[1:], taps[0])

    def theta(self, h, a, b):
        return self.refs["theta"][h, a, b]

    # --- forward quantities

    def logits(self, h, i0, j0):
        """z = conv_pre(mask_0(q k^T / sqrt(D))) of head h, before mixing: [block_q, block_k]."""
        lay = self.lay
        if not lay.conv:
            return dot(self.rows("q", h, i0), self.cols("k", h, j0)) * self.scale
        zeros = jnp.zeros((lay.block_q, lay.block_k), jnp.float32)
        c_q, c_k = lay.taps

        def exact(h):
            def row_tap(a, z):
                q = self.rows("q", h, i0, c_q - 1 - a)
                for b in range(c_k):
                    x = dot(q, self.cols("k", h, j0, b - lay.pad_cols))
                    z = z + self.theta(h, a, b) * jnp.where(self.tap_mask(i0, j0, a, b), x, 0.0)
                return z

            return lax.fori_loop(0, c_q, row_tap, zeros)

        def clean(h):
            def col_tap(b, z):
                q_conv = self.q_conv(h, i0, b).astype(self.refs["k"].dtype)
                return z + dot(q_conv, self.cols("k", h, j0, b - lay.pad_cols))

            return lax.fori_loop(0, c_k, col_tap, zeros)

        return lax.cond(self.is_clean(i0, j0), clean, exact, h) * self.scale

    def mixed(self, heads: list, z: list) -> list:
        """y_g = sum_h W[g, h] z_h over the program's heads (z itself without mixing)."""
        if not self.lay.mixing:
            return z
        mix = self.refs["mix"]
        return [sum(mix[g, h] * z_h for h, z_h in zip(heads, z, strict=True)) for g in heads]

    # --- backward quantities

    def d_logits(self, heads: list, i0, j0, z: list):
        """(p, dy) per mixed head g: p = exp(y - lse) where allowed, dy = p (dO . v - delta),
        the gradient w.r.t. the pre-softmax logits y: [block_q, block_k] each."""
        keep = self.allowed(i0, j0)
        probs, grads = [], []
        for g, y in zip(heads, self.mixed(heads, z), strict=True):
            lse, delta = self.rows("lse", g, i0), self.rows("delta", g, i0)
            p = jnp.where(keep, jnp.exp(y - lse[:, None]), 0.0)
            d_p = dot(self.rows("d_out", g, i0), self.cols("v", g, j0))
            probs.append(p)
            grads.append(p * (d_p - delta[:, None]))
        return probs, grads

    def unmixed(self, heads: list, d_y: list) -> list:
        """dz_h = sum_g W[g, h] dy_g: the gradient through the mixing (d_y without it)."""
        if not self.lay.mixing:
            return d_y
        mix = self.refs["mix"]
        return [sum(mix[g, h] * d for g, d in zip(heads, d_y, strict=True)) for h in heads]

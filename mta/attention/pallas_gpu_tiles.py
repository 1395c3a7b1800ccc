"""Tile math of the Triton-shaped MTA kernels (pallas_gpu.py, pallas_gpu_post.py,
pallas_gpu_heads.py, pallas_gpu_backward.py).

Triton takes no slice of a value held in registers, so every halo is a load from memory. Under the
key-query conv a tile's logits are a sum of products of q rows shifted up by s = c_q - 1 - a and k
columns shifted by d = b - r (r = (c_k - 1) // 2), each read at its offset. The inputs are
zero-padded (c_q - 1 rows above, r columns each side, plus the post part's staged margin) so
every read is in range, and a padded row or column contributes the 0 that mask_0 asks for. Two
ways to sum the products:

    clean tile    every shifted pair (i - s, j + d) causal and in one document: the conv moves
                  onto k, z = sum_a q[i - s_a] . (sum_b theta[a, b] k[j + d_b]): c_q dots (or
                  onto q, c_k dots, when c_k < c_q)
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
from jax.experimental.pallas import triton as pl_triton

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
    post_taps: tuple  # (c_q', c_k') of kq_post; (1, 1) without it
    group: int  # heads in one program: the heads the pre and post mixing join
    mixing: int  # heads one group of the pre mixing joins (H if linear); 0 without it
    mixing_post: int  # the same for the post mixing
    segments: bool
    interpret: bool

    @property
    def conv(self) -> bool:
        return self.taps != (1, 1)

    @property
    def post(self) -> bool:
        return self.post_taps != (1, 1) or self.mixing_post

    @property
    def staged_heads(self) -> bool:
        """Programs of more than one head, or with a head mixing, keep per-head tiles in
        scratch and loop over the heads (pallas_gpu_heads.py) instead of unrolling each head's
        code; the others, one head without mixing, keep them in registers."""
        return self.group > 1 or bool(self.mixing or self.mixing_post)

    @property
    def r_pre(self) -> int:
        return (self.taps[1] - 1) // 2

    @property
    def r_post(self) -> int:
        return (self.post_taps[1] - 1) // 2

    @property
    def margin(self) -> int:
        """Rows / columns staged around a tile for the post conv's halo: a power of two >= 16
        (a Triton tile side), 0 without a post conv."""
        halo = max(self.post_taps[0] - 1, self.r_post)
        return 0 if halo == 0 else max(16, pow2(halo))

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
        """Rows above row 0 of q-like arrays: the pre conv's halo of the staged margin."""
        return self.taps[0] - 1 + self.margin

    @property
    def pad_cols(self) -> int:
        return self.r_pre + self.margin

    @property
    def row_padding(self) -> tuple:
        """(above, below) that pad the T rows of q-like arrays."""
        return self.pad_rows, self.num_qb * self.block_q - self.num_t + self.margin

    @property
    def col_padding(self) -> tuple:
        return self.pad_cols, self.num_kb * self.block_k - self.num_s + self.pad_cols

    def key_block_end(self, i0):
        """Key blocks 0 .. end - 1 hold every key the query block from row i0 may see."""
        return jnp.minimum(self.num_kb, (i0 + self.block_q - 1 + self.offset) // self.block_k + 1)

    def query_block_start(self, j0):
        """Query blocks start .. num_qb - 1 hold every query that may see key j0 on."""
        return jnp.maximum(j0 - self.offset, 0) // self.block_q


def barrier(lay: Layout):
    """Orders a program's writes to its scratch before the reads that follow (and back)."""
    if not lay.interpret:  # interpret mode runs a program's ops in order
        pl_triton.debug_barrier()


def pow2(n: int) -> int:
    """The least power of two >= n (Triton's tensor sides)."""
    return 1 << (n - 1).bit_length()


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
    (Layout.col_padding), seg_q [rows], seg_k [cols]; whole theta / theta_post [H, c_q, c_k]
    and mix / mix_post [H, H] (out = W @ in)."""

    def __init__(self, lay: Layout, refs: dict):
        self.lay, self.refs = lay, refs
        self.scale = lay.dim**-0.5

    # --- loads: n rows from global row i0 - s, n columns from global column j0 + d (n defaults
    # to block_q / block_k; a staged margin tile is narrower)

    def rows(self, name: str, h, i0, s=0, n=None):
        ref = self.refs[name]
        window = pl.ds(i0 - s + self.lay.pad_rows, n or self.lay.block_q)
        return ref[h, window] if ref.ndim == 2 else ref[h, window, :]

    def cols(self, name: str, h, j0, d=0, n=None):
        """Key / value columns of query head h's kv head."""
        window = pl.ds(j0 + d + self.lay.pad_cols, n or self.lay.block_k)
        return self.refs[name][h // self.lay.per_kv, window, :]

    def seg_rows(self, i0, s=0, n=None):
        return self.refs["seg_q"][pl.ds(i0 - s + self.lay.pad_rows, n or self.lay.block_q)]

    def seg_cols(self, j0, d=0, n=None):
        return self.refs["seg_k"][pl.ds(j0 + d + self.lay.pad_cols, n or self.lay.block_k)]

    # --- masks

    def allowed(self, i0, j0, s=0, d=0, n_r=None, n_c=None):
        """[n_r, n_c]: may row i - s see column j + d (bounds, causal, document)."""
        lay = self.lay
        shape = (n_r or lay.block_q, n_c or lay.block_k)
        r = i0 - s + lax.broadcasted_iota(jnp.int32, shape, 0)
        c = j0 + d + lax.broadcasted_iota(jnp.int32, shape, 1)
        ok = (r >= 0) & (r < lay.num_t) & (c >= 0) & (c < lay.num_s) & (c <= r + lay.offset)
        if lay.segments:
            seg_r, seg_c = self.seg_rows(i0, s, shape[0]), self.seg_cols(j0, d, shape[1])
            ok = ok & (seg_r[:, None] == seg_c[None, :])
        return ok

    def same_doc(self, i0, s, n=None):
        """[n, 1]: rows i and i - s in one document (conv taps along queries read 0 across
        documents); True without documents."""
        if not self.lay.segments:
            return True
        return (self.seg_rows(i0, 0, n) == self.seg_rows(i0, s, n))[:, None]

    def tap_mask(self, i0, j0, a, b, n_r=None, n_c=None):
        """Where pre conv tap (a, b) reads a product: allowed, rows i - s and i in one document."""
        s, d = self.lay.taps[0] - 1 - a, b - self.lay.r_pre
        return self.allowed(i0, j0, s, d, n_r, n_c) & self.same_doc(i0, s, n_r)

    def is_clean(self, i0, j0, n_r=None, n_c=None):
        """Scalar bool: every tap product of the tile is unmasked (see the module docstring)."""
        lay = self.lay
        n_r, n_c = n_r or lay.block_q, n_c or lay.block_k
        halo, r = lay.taps[0] - 1, lay.r_pre
        causal = i0 - halo + lay.offset >= j0 + n_c - 1 + r
        if not lay.segments:
            return causal
        ids = (self.seg_rows(i0, halo, n_r), self.seg_rows(i0, 0, n_r))
        ids += (self.seg_cols(j0, -r, n_c), self.seg_cols(j0, r, n_c))
        lo = functools.reduce(jnp.minimum, [x.min() for x in ids])
        hi = functools.reduce(jnp.maximum, [x.max() for x in ids])
        return causal & (lo == hi)

    # --- the conv moved onto q or k (clean tiles)

    # The tap sums are loops, not unrolled: unrolled, Triton issues every tap's load at once and
    # spills (scripts/gpu_kernel_ir.py --cubin; docs/benchmarks.md).

    def q_conv(self, h, i0, b, n=None):
        """sum_a theta[h, a, b] q[i - s_a]: [n, D] float32."""
        c_q, n = self.lay.taps[0], n or self.lay.block_q

        def tap(a, acc):
            return acc + self.theta(h, a, b) * self.rows("q", h, i0, c_q - 1 - a, n)

        return lax.fori_loop(0, c_q, tap, jnp.zeros((n, self.lay.dim), jnp.float32))

    def k_conv(self, h, j0, a, n=None):
        """sum_b theta[h, a, b] k[j + d_b]: [n, D] float32."""
        c_k, r, n = self.lay.taps[1], self.lay.r_pre, n or self.lay.block_k

        def tap(b, acc):
            return acc + self.theta(h, a, b) * self.cols("k", h, j0, b - r, n)

        return lax.fori_loop(0, c_k, tap, jnp.zeros((n, self.lay.dim), jnp.float32))

    def theta(self, h, a, b, name="theta"):
        return self.refs[name][h, a, b]

    # --- forward quantities

    def logits(self, h, i0, j0, n_r=None, n_c=None):
        """z = conv_pre(mask_0(q k^T / sqrt(D))) of head h, before mixing: [n_r, n_c]."""
        lay = self.lay
        n_r, n_c = n_r or lay.block_q, n_c or lay.block_k
        if not lay.conv:
            return dot(self.rows("q", h, i0, 0, n_r), self.cols("k", h, j0, 0, n_c)) * self.scale
        zeros = jnp.zeros((n_r, n_c), jnp.float32)
        (c_q, c_k), r = lay.taps, lay.r_pre

        def exact(h):
            def row_tap(a, z):
                q = self.rows("q", h, i0, c_q - 1 - a, n_r)

                def col_tap(b, z):
                    x = dot(q, self.cols("k", h, j0, b - r, n_c))
                    keep = self.tap_mask(i0, j0, a, b, n_r, n_c)
                    return z + self.theta(h, a, b) * jnp.where(keep, x, 0.0)

                return lax.fori_loop(0, c_k, col_tap, z)

            return lax.fori_loop(0, c_q, row_tap, zeros)

        def clean(h):  # the conv on the operand with fewer taps: min(c_q, c_k) dots
            dtype = self.refs["k"].dtype
            if c_q <= c_k:

                def row_tap(a, z):
                    k_conv = self.k_conv(h, j0, a, n_c).astype(dtype)
                    return z + dot(self.rows("q", h, i0, c_q - 1 - a, n_r), k_conv)

                return lax.fori_loop(0, c_q, row_tap, zeros)

            def col_tap(b, z):
                q_conv = self.q_conv(h, i0, b, n_r).astype(dtype)
                return z + dot(q_conv, self.cols("k", h, j0, b - r, n_c))

            return lax.fori_loop(0, c_k, col_tap, zeros)

        return lax.cond(self.is_clean(i0, j0, n_r, n_c), clean, exact, h) * self.scale

    def mixed(self, heads: list, z: list, name="mix") -> list:
        """y_g = sum_h W[g, h] z_h over the program's heads (z itself without that mixing)."""
        if name not in self.refs:
            return z
        mix = self.refs[name]
        return [sum(mix[g, h] * z_h for h, z_h in zip(heads, z, strict=True)) for g in heads]

    def probs(self, heads: list, i0, j0, n_r=None, n_c=None) -> list:
        """Softmax probabilities from the row log-sum-exp, 0 where masked: [n_r, n_c] per head."""
        y = [self.logits(h, i0, j0, n_r, n_c) for h in heads]  # no mixing: staged_heads
        keep = self.allowed(i0, j0, 0, 0, n_r, n_c)
        lse = [self.rows("lse", g, i0, 0, n_r)[:, None] for g in heads]
        return [jnp.where(keep, jnp.exp(y_g - m), 0.0) for y_g, m in zip(y, lse, strict=True)]

    # --- backward quantities

    def d_attention(self, heads: list, i0, j0, n_r=None, n_c=None) -> list:
        """dA = mask(dO v^T): the gradient w.r.t. the attention weights, [n_r, n_c] per head."""
        keep = self.allowed(i0, j0, 0, 0, n_r, n_c)
        return [
            jnp.where(
                keep, dot(self.rows("d_out", h, i0, 0, n_r), self.cols("v", h, j0, 0, n_c)), 0.0
            )
            for h in heads
        ]

    def d_logits(self, heads: list, i0, j0, z: list, d_probs: list):
        """(p, dy) per mixed head g: p = exp(y - lse) where allowed, dy = p (dP - delta), the
        gradient w.r.t. the pre-softmax logits y, with dP the gradient w.r.t. p."""
        keep = self.allowed(i0, j0)
        probs, grads = [], []
        for g, y, d_p in zip(heads, z, d_probs, strict=True):  # no mixing: staged_heads
            lse, delta = self.rows("lse", g, i0), self.rows("delta", g, i0)
            p = jnp.where(keep, jnp.exp(y - lse[:, None]), 0.0)
            probs.append(p)
            grads.append(p * (d_p - delta[:, None]))
        return probs, grads

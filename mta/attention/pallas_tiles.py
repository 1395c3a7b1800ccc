"""The tile math of the Pallas MTA kernels (pallas_mta.py, pallas_backward.py), run inside a
kernel body on the program's windows of the padded inputs (pallas_grid.py).

Every quantity is computed on a window of global (query row, key column) coordinates: start
(traced) and size (static). A window reads the halo it needs as a wider window of its input:

    y(rows, cols)   pre-softmax logits: masked logits of c_q - 1 rows above, r cols each side,
                    key-query conv (valid), then head mixing (all heads are in the tile)
    p(rows, cols)   exp(y - m) / l with the row statistics of the stats pass, 0 where masked
    a(rows, cols)   post conv of p on c_q' - 1 rows above and r' cols each side, post mixing,
                    mask_0: the attention weights
    da, dp, dy, dx  their gradients; a transposed conv reads rows *below* (c_q - 1) and cols
                    each side, so dx(rows, cols) needs dy on c_q - 1 more rows and r more cols

Tiles are [H, rows, cols] float32 arrays (all heads of a block at once: head mixing needs
them); the body uses batched dots over key/value heads, static value slices (the halos) and
elementwise ops. Inputs are padded so every window is in range (Geometry.pad_rows / pad_cols);
padded positions are masked by position, their values never matter.
"""

from dataclasses import dataclass

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_BATCH_NT = (((2,), (2,)), ((0,), (0,)))  # a[k] @ b[k].T
_BATCH_NN = (((2,), (1,)), ((0,), (0,)))  # a[k] @ b[k]
_BATCH_TN = (((1,), (1,)), ((0,), (0,)))  # a[k].T @ b[k]
_HIGHEST = lax.Precision.HIGHEST


@dataclass(frozen=True)
class Geometry:
    """Static shapes of one call: sizes, blocks, taps, which MTA parts are present."""

    num_t: int
    num_s: int
    heads: int
    kv_heads: int
    dim: int
    block_q: int
    block_k: int
    pre_taps: tuple  # (c_q, c_k); (1, 1) without kq_pre
    post_taps: tuple  # (c_q', c_k'); (1, 1) without kq_post
    mix_pre: bool
    mix_post: bool
    segments: bool
    interpret: bool

    @property
    def kq_pre(self) -> bool:
        return self.pre_taps != (1, 1)

    @property
    def kq_post(self) -> bool:
        return self.post_taps != (1, 1)

    @property
    def post(self) -> bool:
        return self.kq_post or self.mix_post

    @property
    def offset(self) -> int:
        return self.num_s - self.num_t  # query i sits at key position i + offset

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    @property
    def num_qb(self) -> int:
        return -(-self.num_t // self.block_q)

    @property
    def num_kb(self) -> int:
        return -(-self.num_s // self.block_k)

    @property
    def pad_rows(self) -> int:
        """Rows of padding above (and below the last block): the widest row halo is read by
        the backward's dx window (c_q - 1 above for y, c_q - 1 + c_q' - 1 below)."""
        return 2 * (self.pre_taps[0] - 1) + 2 * (self.post_taps[0] - 1)

    @property
    def pad_cols(self) -> int:
        return 2 * ((self.pre_taps[1] - 1) // 2 + (self.post_taps[1] - 1) // 2)

    @property
    def window_rows(self) -> int:
        """Rows of a program's query window: block_q + 2 pad_rows, up to a multiple of 8 (the
        TPU lowering's rule for a block's second-minor dimension)."""
        return _round_up(self.block_q + 2 * self.pad_rows, 8)

    @property
    def window_cols(self) -> int:
        """Columns of a program's key window: block_k + 2 pad_cols, up to a multiple of 8, or of
        128 with documents (the key ids' window is a [1, cols] block)."""
        return _round_up(self.block_k + 2 * self.pad_cols, 128 if self.segments else 8)

    @property
    def rows_padded(self) -> int:
        return (self.num_qb - 1) * self.block_q + self.window_rows

    @property
    def cols_padded(self) -> int:
        return (self.num_kb - 1) * self.block_k + self.window_cols

    @property
    def stats_padding(self) -> tuple:
        """(above, below) that pad per-query-block rows [num_qb * block_q] to rows_padded."""
        return self.pad_rows, self.rows_padded - self.pad_rows - self.num_qb * self.block_q

    def key_block_end(self, qb):
        """Key blocks 0 .. end-1 hold every key query block qb may see (traced)."""
        last_key = qb * self.block_q + self.block_q - 1 + self.offset
        return jnp.minimum(self.num_kb, last_key // self.block_k + 1)

    def query_block_start(self, kb):
        """Query blocks start .. num_qb-1 hold every query that may see key block kb (traced)."""
        return jnp.maximum(kb * self.block_k - self.offset, 0) // self.block_q


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class Tiles:
    """Window computations of program (query block qb, key block kb) of one batch row.

    refs: name -> ref of this program's windows (pallas_grid): q / d_out [H, rows, D], k / v
    [K, cols, D], m / l / delta [H, rows, 1], seg_q [rows, 1], seg_k [1, cols] with rows from
    global query qb * block_q - pad_rows and cols from global key kb * block_k - pad_cols; and
    whole kq_pre / kq_post [H, c_q, c_k], mix_pre / mix_post [H, H] (out = W @ in).
    """

    def __init__(self, geo: Geometry, refs: dict, qb, kb):
        self.geo, self.refs = geo, refs
        self.scale = geo.dim**-0.5
        self.row_base = qb * geo.block_q - geo.pad_rows  # global index of window row 0
        self.col_base = kb * geo.block_k - geo.pad_cols

    def rows(self, r0, n: int):
        """The slice of the query-indexed windows holding global rows r0 .. r0 + n - 1."""
        return pl.ds(r0 - self.row_base, n)

    def cols(self, c0, n: int):
        """The slice of the key-indexed windows holding global columns c0 .. c0 + n - 1."""
        return pl.ds(c0 - self.col_base, n)

    # --- masks -------------------------------------------------------------------------------

    def allowed(self, r0, n_r: int, c0, n_c: int):
        """[n_r, n_c] bool: inside [0, T) x [0, S), causal, same document."""
        g = self.geo
        rows = r0 + lax.broadcasted_iota(jnp.int32, (n_r, n_c), 0)
        cols = c0 + lax.broadcasted_iota(jnp.int32, (n_r, n_c), 1)
        ok = (rows >= 0) & (rows < g.num_t) & (cols >= 0) & (cols <= rows + g.offset)
        ok = ok & (cols < g.num_s)
        if g.segments:
            seg_r = self.refs["seg_q"][self.rows(r0, n_r), :]
            seg_c = self.refs["seg_k"][:, self.cols(c0, n_c)]
            ok = ok & (seg_r == seg_c)
        return ok

    def same_doc(self, r0, n_r: int, shift: int):
        """[n_r, 1] float: 1 where row r0+t and row r0+t-shift are in one document (query-axis
        conv taps read 0 across documents); a scalar 1.0 when that cannot differ."""
        if not self.geo.segments or shift == 0:
            return 1.0
        seg = self.refs["seg_q"]
        here, there = seg[self.rows(r0, n_r), :], seg[self.rows(r0 - shift, n_r), :]
        return (here == there).astype(jnp.float32)

    # --- convolutions and head mixing on [H, rows, cols] ---------------------------------------

    def conv(self, x, name: str, r0, n_r: int, n_c: int):
        """Valid key-query conv: x [H, n_r + c_q - 1, n_c + c_k - 1] (rows from r0 - (c_q-1))
        -> [H, n_r, n_c]: sum_ab theta[h, a, b] x[h, t + a, c + b] (same document)."""
        theta = self.refs[name][...].astype(jnp.float32)
        _, c_q, c_k = theta.shape
        acc = jnp.zeros((x.shape[0], n_r, n_c), jnp.float32)
        for a in range(c_q):
            row = sum(
                theta[:, a, b, None, None] * x[:, a : a + n_r, b : b + n_c] for b in range(c_k)
            )
            acc = acc + row * self.same_doc(r0, n_r, c_q - 1 - a)
        return acc

    def conv_t(self, g, name: str, r0, n_r: int, n_c: int):
        """Transpose of conv: g [H, n_r + c_q - 1, n_c + c_k - 1] (rows from r0, cols from
        c0 - r) -> [H, n_r, n_c]: sum_ab theta[h, a, b] g[h, t + c_q-1-a, c + c_k-1-b]."""
        theta = self.refs[name][...].astype(jnp.float32)
        _, c_q, c_k = theta.shape
        acc = jnp.zeros((g.shape[0], n_r, n_c), jnp.float32)
        for a in range(c_q):
            s = c_q - 1 - a
            row = sum(
                theta[:, a, b, None, None] * g[:, s : s + n_r, c_k - 1 - b : c_k - 1 - b + n_c]
                for b in range(c_k)
            )
            acc = acc + row * self.same_doc(r0 + s, n_r, s)
        return acc

    def conv_grad(self, g, x, name: str, r0, n_r: int, n_c: int):
        """d theta[h, a, b] = sum g[h] * x[h, a:, b:] (same doc): [H, c_q, c_k] float32, with
        g [H, n_r, n_c] the gradient of conv's output and x its input."""
        _, c_q, c_k = self.refs[name].shape
        rows = []
        for a in range(c_q):
            g_a = g * self.same_doc(r0, n_r, c_q - 1 - a)
            taps = [jnp.sum(g_a * x[:, a : a + n_r, b : b + n_c], axis=(1, 2)) for b in range(c_k)]
            rows.append(jnp.stack(taps, axis=-1))
        return jnp.stack(rows, axis=1)

    def mix(self, x, name: str, transpose: bool = False):
        """out[g] = sum_h W[g, h] x[h] (or W^T): [H, n_r, n_c] -> [H, n_r, n_c]."""
        w = self.refs[name][...].astype(jnp.float32)
        w = w.T if transpose else w
        flat = x.reshape(x.shape[0], -1)
        return lax.dot(w, flat, precision=_HIGHEST).reshape(x.shape)

    @staticmethod
    def mix_grad(g, x):
        """d W[g, h] = sum g[g] * x[h]: [H, H] float32."""
        flat_g, flat_x = g.reshape(g.shape[0], -1), x.reshape(x.shape[0], -1)
        return lax.dot_general(flat_g, flat_x, _NT, precision=_HIGHEST)

    # --- heads against key / value heads (GQA: query head h reads kv head h // group) -------

    def by_kv(self, x):
        """[H, R, X] -> [K, group * R, X]."""
        return x.reshape(self.geo.kv_heads, -1, x.shape[-1])

    def by_head(self, x):
        """[K, group * R, X] -> [H, R, X]."""
        return x.reshape(self.geo.heads, -1, x.shape[-1])

    def head_dot(self, a, b):
        """a [H, R, X] against b [K, C, X] over X: [H, R, C] float32."""
        out = lax.dot_general(self.by_kv(a), b, _BATCH_NT, preferred_element_type=jnp.float32)
        return self.by_head(out)

    def head_matmul(self, a, b):
        """a [H, R, C] @ b [K, C, D]: [H, R, D] float32."""
        out = lax.dot_general(self.by_kv(a), b, _BATCH_NN, preferred_element_type=jnp.float32)
        return self.by_head(out)

    def kv_matmul(self, a, b):
        """sum over the heads of each kv head of a[h].T @ b[h]: a [H, R, C], b [H, R, D]
        -> [K, C, D] float32."""
        return lax.dot_general(
            self.by_kv(a), self.by_kv(b), _BATCH_TN, preferred_element_type=jnp.float32
        )

    # --- forward windows ---------------------------------------------------------------------

    def logits0(self, r0, n_r: int, c0, n_c: int):
        """Scaled q.k logits, 0 where masked (mask_0): [H, n_r, n_c] float32."""
        q = self.refs["q"][:, self.rows(r0, n_r), :]
        k = self.refs["k"][:, self.cols(c0, n_c), :]
        x = self.head_dot(q, k) * self.scale
        return jnp.where(self.allowed(r0, n_r, c0, n_c), x, 0.0)

    def pre(self, r0, n_r: int, c0, n_c: int):
        """(x0 on the window with its halo, z = conv_pre(x0), y = mix_pre(z)): [H, ...] each."""
        c_q, c_k = self.geo.pre_taps
        r = (c_k - 1) // 2
        x0 = self.logits0(r0 - (c_q - 1), n_r + c_q - 1, c0 - r, n_c + 2 * r)
        z = self.conv(x0, "kq_pre", r0, n_r, n_c) if self.geo.kq_pre else x0
        y = self.mix(z, "mix_pre") if self.geo.mix_pre else z
        return x0, z, y

    def probs(self, r0, n_r: int, c0, n_c: int):
        """Softmax probabilities from the saved row statistics: [H, n_r, n_c]."""
        allowed = self.allowed(r0, n_r, c0, n_c)
        _, _, y = self.pre(r0, n_r, c0, n_c)
        m = self.refs["m"][:, self.rows(r0, n_r), :]
        l_ = self.refs["l"][:, self.rows(r0, n_r), :]
        return jnp.exp(jnp.where(allowed, y - m, -jnp.inf)) / l_

    def post(self, r0, n_r: int, c0, n_c: int):
        """(p with the post halo, c = conv_post(p), a = mask_0(mix_post(c)))."""
        c_q, c_k = self.geo.post_taps
        r = (c_k - 1) // 2
        p = self.probs(r0 - (c_q - 1), n_r + c_q - 1, c0 - r, n_c + 2 * r)
        c = self.conv(p, "kq_post", r0, n_r, n_c) if self.geo.kq_post else p
        mixed = self.mix(c, "mix_post") if self.geo.mix_post else c
        return p, c, jnp.where(self.allowed(r0, n_r, c0, n_c), mixed, 0.0)

    def weights(self, r0, n_r: int, c0, n_c: int):
        """The attention weights A: [H, n_r, n_c]."""
        if self.geo.post:
            return self.post(r0, n_r, c0, n_c)[2]
        return self.probs(r0, n_r, c0, n_c)

    # --- backward windows --------------------------------------------------------------------

    def d_weights(self, r0, n_r: int, c0, n_c: int):
        """dA = mask(d_out . v): [H, n_r, n_c] float32."""
        d_out = self.refs["d_out"][:, self.rows(r0, n_r), :]
        v = self.refs["v"][:, self.cols(c0, n_c), :].astype(d_out.dtype)
        return jnp.where(self.allowed(r0, n_r, c0, n_c), self.head_dot(d_out, v), 0.0)

    def d_probs(self, r0, n_r: int, c0, n_c: int):
        """dP: the gradient w.r.t. the probabilities, through post mixing and the post conv."""
        c_q, c_k = self.geo.post_taps
        r = (c_k - 1) // 2
        d_a = self.d_weights(r0, n_r + c_q - 1, c0 - r, n_c + 2 * r)
        d_c = self.mix(d_a, "mix_post", transpose=True) if self.geo.mix_post else d_a
        return self.conv_t(d_c, "kq_post", r0, n_r, n_c) if self.geo.kq_post else d_c

    def d_logits(self, r0, n_r: int, c0, n_c: int):
        """dy = p (dP - delta), the gradient w.r.t. the pre-softmax logits y."""
        p = self.probs(r0, n_r, c0, n_c)
        d_p = self.d_probs(r0, n_r, c0, n_c)
        return p * (d_p - self.refs["delta"][:, self.rows(r0, n_r), :])

    def d_scores(self, r0, n_r: int, c0, n_c: int):
        """(dx, dy, dz) on the window: dx = scale * mask(conv_pre^T(mix_pre^T(dy))), the gradient
        w.r.t. the q.k products; dy (for d mix_pre) and dz = mix_pre^T(dy) (for d kq_pre).
        dy is computed on c_q - 1 more rows below and r more cols each side."""
        c_q, c_k = self.geo.pre_taps
        r = (c_k - 1) // 2
        d_y = self.d_logits(r0, n_r + c_q - 1, c0 - r, n_c + 2 * r)
        d_z = self.mix(d_y, "mix_pre", transpose=True) if self.geo.mix_pre else d_y
        d_x = self.conv_t(d_z, "kq_pre", r0, n_r, n_c) if self.geo.kq_pre else d_z
        d_x = jnp.where(self.allowed(r0, n_r, c0, n_c), d_x, 0.0) * self.scale
        return d_x, d_y[:, :n_r, r : r + n_c], d_z[:, :n_r, r : r + n_c]

"""The geometry of blockwise MTA (blockwise.py): block sizes per backend, the padded inputs,
and the slices each tile reads (its halos included)."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from mta.attention.kernels import KernelSpec

# (block_q, block_k) per jax.default_backend(). CPU: of 128 x 128/256/512/1024, 256 x 512 and
# 64 x 256, 128 x 256 was fastest for the release setting at T = 2048 and 4096 (fwd + bwd, a
# loaded 2-core machine: 1.8 s vs 2.3 s for 128 x 512 at 2048); the row strips (block_q + c_q'
# - 1 rows x S) are the largest buffers. Accelerators: the usual flash tile, not tuned.
BLOCKS = {"cpu": (128, 256), "gpu": (128, 128), "tpu": (128, 128)}


def default_blocks(backend: str | None = None) -> tuple[int, int]:
    """(block_q, block_k) for a backend (default: jax.default_backend())."""
    return BLOCKS.get(backend or jax.default_backend(), (128, 128))


@dataclass(frozen=True)
class Plan:
    """Static geometry: sizes, block counts and the halos of the pre and post convolutions."""

    num_t: int
    num_s: int
    block_q: int
    block_k: int
    spec: KernelSpec
    tuned: bool  # the conv and mixing VJPs of conv.py (XLA:CPU)

    @property
    def pre_cq(self) -> int:
        return self.spec.pre_taps[0]

    @property
    def post_cq(self) -> int:
        return self.spec.post_taps[0]

    @property
    def pre_r(self) -> int:
        return self.spec.pre_r

    @property
    def post_r(self) -> int:
        return self.spec.post_r

    @property
    def num_qb(self) -> int:
        return -(-self.num_t // self.block_q)

    @property
    def num_kb(self) -> int:
        return -(-self.num_s // self.block_k)

    @property
    def rows_above(self) -> int:
        """Query rows above a block that its output reads: (c_q - 1) + (c_q' - 1)."""
        return self.pre_cq - 1 + self.post_cq - 1

    @property
    def cols_side(self) -> int:
        """Key columns each side of a block that its output reads: r + r'."""
        return self.pre_r + self.post_r

    @property
    def strip_rows(self) -> int:
        """Rows of a logit strip: the block's queries and the c_q' - 1 above (post conv halo)."""
        return self.block_q + self.post_cq - 1

    @property
    def strip_cols(self) -> int:
        """Columns of a strip buffer: every key block plus r' on each side (key j at j + r')."""
        return self.num_kb * self.block_k + 2 * self.post_r

    @property
    def band(self) -> int:
        """Diagonals next to the causal boundary whose pre-softmax logits read a masked
        (future) logit: r + c_q - 1 (0 without a pre conv)."""
        return self.pre_r + self.pre_cq - 1 if self.spec.pre_conv else 0

    def key_blocks(self, qb):
        """Number of key blocks query block qb needs: the rest are causally masked (traced)."""
        last_key = qb * self.block_q + self.block_q - 1 + self.num_s - self.num_t
        return jnp.minimum(self.num_kb, last_key // self.block_k + 1)


def allowed_pairs(plan: Plan, rows_R, cols_C, seg_BR, seg_BC):
    """Which (query, key) pairs of a tile may interact: [B or 1, 1, R, C] booleans.

    rows / cols are global query / key indices (may lie outside [0, T) / [0, S): not allowed).
    """
    inside_R = (rows_R >= 0) & (rows_R < plan.num_t)
    inside_C = (cols_C >= 0) & (cols_C < plan.num_s)
    causal_RC = cols_C[None, :] <= rows_R[:, None] + plan.num_s - plan.num_t
    allowed_RC = causal_RC & inside_R[:, None] & inside_C[None, :]
    if seg_BR is None:
        return allowed_RC[None, None]
    same_doc_BRC = seg_BR[:, :, None] == seg_BC[:, None, :]
    return (allowed_RC[None] & same_doc_BRC)[:, None]


def dynamic_slice(x, start, size: int, axis: int):
    return lax.dynamic_slice_in_dim(x, start, size, axis)


def add_at(buf, start, update, axis: int):
    """buf[..., start : start + n, ...] += update along axis (n = update.shape[axis])."""
    current = lax.dynamic_slice_in_dim(buf, start, update.shape[axis], axis)
    return lax.dynamic_update_slice_in_dim(buf, current + update.astype(buf.dtype), start, axis)


def pad_axis(x, axis: int, before: int, after: int, value=0):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return jnp.pad(x, widths, constant_values=value)


def padded_inputs(plan: Plan, q, k, v, segment_ids):
    """Inputs padded so every tile slice is in range.

    q rows: rows_above zeros on top, then up to num_qb * block_q: padded row i + rows_above is
    query i. k, v columns: cols_side on the left, up to num_kb * block_k + 2 cols_side + 2 r':
    padded column j + cols_side is key j (wide output tiles read v up to 2 r' past the last
    block). Ids pad with -1 (padding is masked by position anyway).
    """
    q_tail = plan.num_qb * plan.block_q - plan.num_t
    k_tail = plan.num_kb * plan.block_k - plan.num_s + plan.cols_side + 2 * plan.post_r
    q_pad = pad_axis(q, 1, plan.rows_above, q_tail)
    k_pad = pad_axis(k, 1, plan.cols_side, k_tail)
    v_pad = pad_axis(v, 1, plan.cols_side, k_tail)
    if segment_ids is None:
        return q_pad, k_pad, v_pad, None, None
    seg_q = pad_axis(segment_ids, 1, plan.rows_above, q_tail, -1)
    seg_k = pad_axis(segment_ids, 1, plan.cols_side, k_tail, -1)
    return q_pad, k_pad, v_pad, seg_q, seg_k


def _seg_slice(seg, start, size: int):
    return None if seg is None else dynamic_slice(seg, start, size, 1)


class Blocks:
    """Tile slices of the padded inputs for query block qb and key block kb (both traced)."""

    def __init__(self, plan: Plan, padded):
        self.plan = plan
        self.q_pad, self.k_pad, self.v_pad, self.seg_q, self.seg_k = padded

    def pre_args(self, qb, kb, extra_rows: int):
        """Inputs of the pre tile whose outputs are queries i0 - extra_rows .. i0 + block_q - 1
        and keys j0 .. j0 + block_k - 1 (i0, j0 the block starts): q with the c_q - 1 rows
        above, k with r columns each side, (seg rows, seg cols), row0 and col0 (the global
        index of q's first row and k's first column)."""
        p = self.plan
        i0, j0 = qb * p.block_q, kb * p.block_k
        rows, cols = p.block_q + extra_rows + p.pre_cq - 1, p.block_k + 2 * p.pre_r
        q_start, k_start = i0 + p.post_cq - 1 - extra_rows, j0 + p.post_r
        q = dynamic_slice(self.q_pad, q_start, rows, 1)
        k = dynamic_slice(self.k_pad, k_start, cols, 1)
        segs = (_seg_slice(self.seg_q, q_start, rows), _seg_slice(self.seg_k, k_start, cols))
        return q, k, segs, i0 - extra_rows - (p.pre_cq - 1), j0 - p.pre_r

    def strip_ids(self, qb):
        """Global indices [strip_rows] and ids ([B, strip_rows] or None) of qb's strip rows."""
        p = self.plan
        start = qb * p.block_q - (p.post_cq - 1)
        rows = start + jnp.arange(p.strip_rows)
        return rows, _seg_slice(self.seg_q, start + p.rows_above, p.strip_rows)

    def post_cols(self, kb):
        """Global indices [block_k + 2 r'] and ids of the columns an output tile's post conv
        reads (r' on each side of key block kb), and v [B, block_k + 2 r', K, D] of the keys
        from j0 on (the output tile is as wide as its input; columns past the block get 0)."""
        p = self.plan
        j0 = kb * p.block_k
        start = j0 - p.post_r
        cols = start + jnp.arange(p.block_k + 2 * p.post_r)
        ids = _seg_slice(self.seg_k, start + p.cols_side, p.block_k + 2 * p.post_r)
        return cols, ids, dynamic_slice(self.v_pad, j0 + p.cols_side, cols.shape[0], 1)

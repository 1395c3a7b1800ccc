"""MTA before the softmax as one Pallas kernel shaped for the Triton (GPU) lowering: key-query conv,
head mixing, causal and document masks, GQA, online softmax. Forward in the kernel; the gradients
come from the blockwise path (custom VJP).

Triton takes no slice of a value held in registers, so every halo is a load from memory. Under the
key-query conv a tile's logits are a sum of products of q rows shifted up by s = c_q - 1 - a and k
columns shifted by d = b - r (r = (c_k - 1) // 2), each read at its offset. The inputs are
zero-padded (c_q - 1 rows above, r columns each side) so every read is in range, and a padded row
or column contributes the 0 that mask_0 asks for. Two ways to sum the products:

    clean tile    every shifted pair (i - s, j + d) causal and in one document: the conv moves
                  onto q, z = sum_b (sum_a theta[a, b] q[i - s_a]) . k[j + d_b]: c_k dots
    other tiles   (the diagonal band, document boundaries) each of the c_q * c_k products masked
                  on its own before it is added

                     <-r->|<------ block_k ------>|<-r->    query rows i0 - (c_q - 1) ..
        c_q - 1 rows      |  halo: shifted loads   |         i0 + block_q - 1 against key
        block_q rows      |  the tile's logits     |         columns j0 - r .. j0 + block_k + r - 1

A program (batch row, query block, head group) holds the heads its pre mixing joins (1 without
mixing, c_h for grouped, all H for [H, H]) and runs over the key blocks up to the causal end. Block
sizes and D must be powers of two (at least 16) for Triton; interpret mode takes any.
"""

import functools
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from mta.attention.blockwise import multi_token_attention_blockwise
from mta.attention.kernels import dense_mixing

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
BLOCK_Q = 64
BLOCK_K = 64


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


def attention(
    q,
    k,
    v,
    kq_pre=None,
    head_pre=None,
    segment_ids=None,
    *,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
    interpret: bool = False,
):
    """q [B,T,H,D], k/v [B,S,K,D] (K divides H) -> [B,T,H,D] (v's dtype); kq_pre [H, c_q, c_k],
    head_pre [H, H] (linear) or [H // c_h, c_h, c_h] (grouped) and segment_ids [B, T] (T == S)
    as in the reference. Gradients w.r.t. q, k, v, kq_pre and head_pre (blockwise)."""
    c_q, c_k = kq_pre.shape[1:] if kq_pre is not None else (1, 1)
    if c_q - 1 > block_q or c_k - 1 > block_k:
        raise ValueError(
            f"the GPU kernel reads a halo of at most one block: c_q - 1 <= block_q and "
            f"c_k - 1 <= block_k, got c_q={c_q}, c_k={c_k}, blocks {block_q} x {block_k}"
        )
    heads = q.shape[2]
    group = 1 if head_pre is None else heads if head_pre.ndim == 2 else head_pre.shape[1]
    lay = Layout(
        q.shape[1], k.shape[1], heads, k.shape[2], q.shape[3], block_q, block_k, (c_q, c_k),
        group, head_pre is not None, segment_ids is not None, interpret,
    )  # fmt: skip
    return _attend(lay, q, k, v, kq_pre, head_pre, segment_ids)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(lay: Layout, q, k, v, kq_pre, head_pre, segment_ids):
    return forward(lay, q, k, v, kq_pre, head_pre, segment_ids)


def _attend_fwd(lay, q, k, v, kq_pre, head_pre, segment_ids):
    out = forward(lay, q, k, v, kq_pre, head_pre, segment_ids)
    return out, (q, k, v, kq_pre, head_pre, segment_ids)


def _attend_bwd(lay, residuals, d_out):
    q, k, v, kq_pre, head_pre, segment_ids = residuals

    def blockwise(q, k, v, kq_pre, head_pre):
        return multi_token_attention_blockwise(
            q, k, v, kq_pre=kq_pre, head_pre=head_pre, segment_ids=segment_ids
        )

    _, vjp = jax.vjp(blockwise, q, k, v, kq_pre, head_pre)
    return (*vjp(d_out), None)


_attend.defvjp(_attend_fwd, _attend_bwd)


def forward(lay: Layout, q, k, v, kq_pre, head_pre, segment_ids):
    """The kernel over the grid (B, query blocks, head groups) -> [B, T, H, D] (v's dtype)."""
    rows = (lay.pad_rows, lay.num_qb * lay.block_q - lay.num_t)
    cols = (lay.pad_cols, lay.num_kb * lay.block_k - lay.num_s + lay.pad_cols)
    inputs = [
        _pad(jnp.swapaxes(x, 1, 2), widths) for x, widths in ((q, rows), (k, cols), (v, cols))
    ]
    if lay.segments:  # padding is -1: no real document, so a tile touching it is never clean
        inputs += [jnp.pad(segment_ids, ((0, 0), w), constant_values=-1) for w in (rows, cols)]
    specs = [_whole_row(x) for x in inputs]
    for weights in (kq_pre, None if head_pre is None else dense_mixing(head_pre)):
        if weights is not None:
            inputs.append(weights.astype(jnp.float32))
            specs.append(pl.BlockSpec(weights.shape, lambda b, i, g, n=weights.ndim: (0,) * n))
    batch, block_q = q.shape[0], lay.block_q
    out = pl.pallas_call(
        partial(_kernel, lay),
        out_shape=jax.ShapeDtypeStruct(
            (batch, lay.heads, lay.num_qb * block_q, lay.dim), jnp.float32
        ),
        grid=(batch, lay.num_qb, lay.heads // lay.group),
        in_specs=specs,
        out_specs=pl.BlockSpec((None, lay.group, block_q, lay.dim), lambda b, i, g: (b, g, i, 0)),
        interpret=lay.interpret,
        compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=2),
        name="mta_pre_gpu",
    )(*inputs)
    return jnp.swapaxes(out[:, :, : lay.num_t], 1, 2).astype(v.dtype)


def _pad(x, widths):
    """Pads axis 2 of [B, H, T, D] with zeros by widths = (before, after)."""
    return jnp.pad(x, ((0, 0), (0, 0), widths, (0, 0)))


def _whole_row(x):
    """A BlockSpec giving each program batch row b of x whole."""
    return pl.BlockSpec((None, *x.shape[1:]), lambda b, i, g, n=x.ndim - 1: (b,) + (0,) * n)


def _kernel(lay: Layout, q_ref, k_ref, v_ref, *refs):
    refs = list(refs)
    o_ref = refs.pop()
    seg_q, seg_k = (refs.pop(0), refs.pop(0)) if lay.segments else (None, None)
    theta = refs.pop(0) if lay.conv else None
    mix = refs.pop(0) if lay.mixing else None
    bq, bk = lay.block_q, lay.block_k
    c_q, c_k = lay.taps
    i0 = pl.program_id(1) * bq
    heads = [pl.program_id(2) * lay.group + t for t in range(lay.group)]
    scale = lay.dim**-0.5
    row_ids = i0 + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    col_iota = lax.broadcasted_iota(jnp.int32, (bq, bk), 1)

    def q_rows(h, s):  # rows i0 - s .. i0 - s + bq of head h: [bq, D]
        return q_ref[h, pl.ds(i0 - s + lay.pad_rows, bq), :]

    def kv_cols(ref, h, j0, d):  # columns j0 + d .. j0 + d + bk of h's key/value head: [bk, D]
        return ref[h // lay.per_kv, pl.ds(j0 + d + lay.pad_cols, bk), :]

    def seg_rows(s):
        return seg_q[pl.ds(i0 - s + lay.pad_rows, bq)]

    def seg_cols(j0, d):
        return seg_k[pl.ds(j0 + d + lay.pad_cols, bk)]

    def allowed(j0, s, d):  # [bq, bk]: may row i - s see column j + d (bounds, causal, document)
        r, c = row_ids - s, j0 + d + col_iota
        ok = (r >= 0) & (r < lay.num_t) & (c >= 0) & (c < lay.num_s) & (c <= r + lay.offset)
        if lay.segments:
            ok = ok & (seg_rows(s)[:, None] == seg_cols(j0, d)[None, :])
        return ok

    def dot(a, b):
        return lax.dot_general(a, b, _NT, preferred_element_type=jnp.float32)

    def exact(h, j0):  # every (a, b) product masked on its own: c_q * c_k dots
        def row_tap(a, z):
            s = c_q - 1 - a
            q = q_rows(h, s)
            same_doc = (seg_rows(0) == seg_rows(s))[:, None] if lay.segments else True
            for b in range(c_k):
                d = b - lay.pad_cols
                keep = allowed(j0, s, d) & same_doc
                z = z + theta[h, a, b] * jnp.where(keep, dot(q, kv_cols(k_ref, h, j0, d)), 0.0)
            return z

        return lax.fori_loop(0, c_q, row_tap, jnp.zeros((bq, bk), jnp.float32))

    def clean(h, j0):  # the conv on q: c_k dots
        def col_tap(b, z):
            taps = [theta[h, a, b] * q_rows(h, c_q - 1 - a).astype(jnp.float32) for a in range(c_q)]
            q_conv = sum(taps[1:], taps[0]).astype(k_ref.dtype)
            return z + dot(q_conv, kv_cols(k_ref, h, j0, b - lay.pad_cols))

        return lax.fori_loop(0, c_k, col_tap, jnp.zeros((bq, bk), jnp.float32))

    def is_clean(j0):
        causal = i0 - (c_q - 1) + lay.offset >= j0 + bk - 1 + lay.pad_cols
        if not lay.segments:
            return causal
        ids = (
            seg_rows(c_q - 1),
            seg_rows(0),
            seg_cols(j0, -lay.pad_cols),
            seg_cols(j0, lay.pad_cols),
        )
        lo = functools.reduce(jnp.minimum, [x.min() for x in ids])
        hi = functools.reduce(jnp.maximum, [x.max() for x in ids])
        return causal & (lo == hi)

    def logits(h, j0):  # before mixing and the softmax mask: [bq, bk] float32
        if not lay.conv:
            return dot(q_rows(h, 0), kv_cols(k_ref, h, j0, 0)) * scale
        return lax.cond(is_clean(j0), clean, exact, h, j0) * scale

    def step(kb, carry):
        j0 = kb * bk
        z = [logits(h, j0) for h in heads]
        if lay.mixing:
            z = [sum(mix[g, h] * z_h for h, z_h in zip(heads, z, strict=True)) for g in heads]
        keep = allowed(j0, 0, 0)
        new = []
        for h, y, (m, l_, acc) in zip(heads, z, carry, strict=True):
            x = jnp.where(keep, y, -jnp.inf)
            m_new = jnp.maximum(m, x.max(axis=1))
            shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            p = jnp.exp(x - shift[:, None])
            alpha = jnp.exp(m - shift)
            v = kv_cols(v_ref, h, j0, 0)
            acc = acc * alpha[:, None] + lax.dot(
                p.astype(v.dtype), v, preferred_element_type=jnp.float32
            )
            new.append((m_new, l_ * alpha + p.sum(axis=1), acc))
        return tuple(new)

    start = tuple(
        (jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32),
         jnp.zeros((bq, lay.dim), jnp.float32))
        for _ in heads
    )  # fmt: skip
    last_key = i0 + bq - 1 + lay.offset
    end = jnp.minimum(lay.num_kb, last_key // bk + 1)
    for t, (_, l_, acc) in enumerate(lax.fori_loop(0, end, step, start)):
        o_ref[t, :, :] = acc / jnp.where(l_ > 0, l_, 1.0)[:, None]

"""Multi-Token Attention as Pallas kernels (impl="pallas"): forward and backward, O(T) memory.

    A = mask_0(mix_post(conv_post(softmax(mask_-inf(mix_pre(conv_pre(mask_0(q k^T / sqrt(D))))))))
    out = A v

Grid (batch, query block, key block), the key blocks innermost and accumulated in the resident
output block (pallas_grid.py); each program holds all H heads of its tile (head mixing needs
them) and skips key blocks causality masks entirely. Forward, two kernels:
  stats   online max m and sum l of exp over the pre-softmax tiles (with their halos);
  out     the probabilities of the block's rows and of the c_q' - 1 rows above it, from (m, l),
          post conv, post mixing, mask_0, then A @ v accumulated in float32.
The backward (pallas_backward.py) recomputes tiles from q, k and (m, l). Tile math: pallas_tiles.py;
layout and diagram: docs/mta.md. Grouped head mixing enters the kernels as its block-diagonal
[H, H] matrix (autodiff outside the kernels maps the gradient back).

These kernels run in Pallas interpret mode on a CPU backend and lower to Mosaic on a TPU; their
overlapping pl.Element windows do not lower for GPUs, where the Triton-shaped kernels of
pallas_gpu.py run instead (same coverage). Not covered (blockwise, with one info line naming why):
the 5-D head_pre (full 3-D conv); on a GPU, sizes Triton cannot tile.
"""

import logging
from functools import partial

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mta.attention import pallas_backward, pallas_gpu
from mta.attention.blockwise import multi_token_attention_blockwise
from mta.attention.core import check_heads, check_segments
from mta.attention.kernels import KernelSpec, dense_mixing
from mta.attention.pallas_grid import call, merge_blocks, pad_time, padded_inputs, per_block
from mta.attention.pallas_tiles import Geometry, Tiles

BLOCK_Q = 64
BLOCK_K = 64
log = logging.getLogger(__name__)


def multi_token_attention_pallas(
    q,
    k,
    v,
    kq_pre=None,
    head_pre=None,
    kq_post=None,
    head_post=None,
    segment_ids=None,
    *,
    block_q: int | None = None,
    block_k: int | None = None,
    interpret: bool | None = None,
    tuned: bool = False,
) -> jax.Array:
    """Pallas MTA: q [B,T,H,D], k/v [B,S,K,D] (K divides H) -> [B,T,H,D] (v's dtype).

    Same arguments and result as the reference (mta/attention/reference.py). block_q / block_k
    need not divide T / S (None: BLOCK_Q x BLOCK_K, on a GPU pallas_gpu.default_blocks).
    interpret: Pallas interpret mode (None: on the CPU backend). Compiled on a GPU backend the
    Triton-shaped kernels of pallas_gpu.py run; what they do not cover falls back to blockwise
    (not_in_kernel).
    tuned is passed on to the blockwise fallback only.
    """
    given = dict(kq_pre=kq_pre, head_pre=head_pre, kq_post=kq_post, head_post=head_post)
    spec = KernelSpec.of(q.shape[2], **given)
    check_heads(q.shape[2], k.shape[2])
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape} do not fit [B,T,H,D], [B,S,K,D]")
    if q.shape[1] > k.shape[1]:
        raise ValueError(f"queries are the last T of S keys: T={q.shape[1]} > S={k.shape[1]}")
    check_segments(segment_ids, q.shape, k.shape)
    backend = _backend()
    if interpret is None:
        interpret = backend == "cpu"
    on_gpu = backend == "gpu" and not interpret
    default_q, default_k = BLOCK_Q, BLOCK_K
    if on_gpu:
        default_q, default_k = pallas_gpu.default_blocks(q.shape[2], head_pre, head_post)
    block_q = default_q if block_q is None else block_q
    block_k = default_k if block_k is None else block_k
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}")
    reason = not_in_kernel(spec, on_gpu, (q.shape[3], block_q, block_k))
    if reason:
        log.info("impl=pallas: %s; using blockwise", reason)
        return multi_token_attention_blockwise(
            q, k, v, **given, segment_ids=segment_ids, block_q=block_q, block_k=block_k, tuned=tuned
        )
    if on_gpu:
        return pallas_gpu.attention(
            q, k, v, **given, segment_ids=segment_ids, block_q=block_q, block_k=block_k
        )
    num_t, num_s = q.shape[1], k.shape[1]
    geo = Geometry(
        num_t, num_s, q.shape[2], k.shape[2], q.shape[3], min(block_q, num_t),
        min(block_k, num_s), spec.pre_taps if spec.kq_pre else (1, 1),
        spec.post_taps if spec.kq_post else (1, 1), spec.head_pre != "none",
        spec.head_post != "none", segment_ids is not None, bool(interpret),
    )  # fmt: skip
    params = {}
    for name, key in (("kq_pre", "kq_pre"), ("kq_post", "kq_post")):
        if given[key] is not None:
            params[name] = given[key].astype(jnp.float32)
    for name, key in (("mix_pre", "head_pre"), ("mix_post", "head_post")):
        if given[key] is not None:
            params[name] = dense_mixing(given[key].astype(jnp.float32))
    return _attend(geo, q, k, v, params, segment_ids)


def not_in_kernel(spec: KernelSpec, on_gpu: bool, sizes: tuple) -> str | None:
    """Why these inputs go to blockwise instead, or None; sizes = (D, block_q, block_k)."""
    if spec.head_pre == "conv3d":
        return "a 5-D head_pre (full 3-D conv) is not in the kernel"
    if not on_gpu:
        return None
    if any(n < 16 or n & (n - 1) for n in sizes):
        return f"Triton needs D and the block sizes to be powers of two >= 16, got {sizes}"
    return None


def _backend() -> str:
    return jax.default_backend()


# --- forward kernels -------------------------------------------------------------------------


def stats_kernel(tiles: Tiles, qb, kb, m_ref, l_ref):
    """Row max m and sum l of exp(y - m) of query block qb, accumulated online over the key
    blocks kb: [H, block_q, 1] each."""
    geo = tiles.geo
    i0, j0 = qb * geo.block_q, kb * geo.block_k

    @pl.when(kb == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)

    @pl.when(kb < geo.key_block_end(qb))
    def _step():
        allowed = tiles.allowed(i0, geo.block_q, j0, geo.block_k)
        _, _, y = tiles.pre(i0, geo.block_q, j0, geo.block_k)
        x = jnp.where(allowed, y, -jnp.inf)
        m_old = m_ref[...]
        m = jnp.maximum(m_old, x.max(axis=2, keepdims=True))
        shift = jnp.where(jnp.isfinite(m), m, 0.0)
        l_ref[...] = l_ref[...] * jnp.exp(m_old - shift) + jnp.exp(x - shift).sum(2, keepdims=True)
        m_ref[...] = m

    @pl.when(kb == geo.num_kb - 1)
    def _finish():  # rows without an allowed key (padding): m = 0, l = 1
        m_ref[...] = jnp.where(jnp.isfinite(m_ref[...]), m_ref[...], 0.0)
        l_ref[...] = jnp.where(l_ref[...] > 0, l_ref[...], 1.0)


def out_kernel(tiles: Tiles, qb, kb, o_ref):
    """A @ v of query block qb, accumulated over the key blocks kb: [H, block_q, D] float32."""
    geo = tiles.geo
    i0, j0 = qb * geo.block_q, kb * geo.block_k

    @pl.when(kb == 0)
    def _init():
        o_ref[...] = jnp.zeros(o_ref.shape, jnp.float32)

    @pl.when(kb < geo.key_block_end(qb))
    def _step():
        a = tiles.weights(i0, geo.block_q, j0, geo.block_k)
        v = tiles.refs["v"][:, tiles.cols(j0, geo.block_k), :]
        o_ref[...] += tiles.head_matmul(a.astype(v.dtype), v)


def stats(geo: Geometry, inputs: dict, params: dict):
    """(m, l): [B, H, rows_padded, 1] float32, padded with m = 0, l = 1."""
    shape, spec = per_block(inputs["q"].shape[0], geo.num_qb, (geo.heads, geo.block_q, 1))
    m, l_ = call(geo, stats_kernel, False, inputs, params, (shape, shape), (spec, spec))
    rows = geo.stats_padding
    return pad_time(merge_blocks(m), rows, 0.0), pad_time(merge_blocks(l_), rows, 1.0)


def forward(geo: Geometry, q, k, v, params, segment_ids):
    """-> out [B, T, H, D] (v's dtype), (m, l)."""
    inputs = padded_inputs(geo, q, k, v, segment_ids)
    m, l_ = stats(geo, inputs, params)
    shape, spec = per_block(q.shape[0], geo.num_qb, (geo.heads, geo.block_q, geo.dim))
    out = call(geo, out_kernel, False, {**inputs, "m": m, "l": l_}, params, shape, spec)
    out = jnp.swapaxes(merge_blocks(out)[:, :, : geo.num_t], 1, 2)
    return out.astype(v.dtype), (m, l_)


# --- custom VJP ------------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(geo: Geometry, q, k, v, params, segment_ids):
    return forward(geo, q, k, v, params, segment_ids)[0]


def _attend_fwd(geo: Geometry, q, k, v, params, segment_ids):
    out, stats_ml = forward(geo, q, k, v, params, segment_ids)
    return out, (q, k, v, params, segment_ids, stats_ml)


def _attend_bwd(geo: Geometry, residuals, d_out):
    q, k, v, params, segment_ids, (m, l_) = residuals
    inputs = padded_inputs(geo, q, k, v, segment_ids)
    rows = (geo.pad_rows, geo.rows_padded - geo.pad_rows - geo.num_t)
    inputs.update(m=m, l=l_, d_out=pad_time(jnp.swapaxes(d_out, 1, 2), rows))
    dq, dk, dv, d_params = pallas_backward.backward(geo, inputs, params)
    dq = jnp.swapaxes(dq[:, :, : geo.num_t], 1, 2).astype(q.dtype)
    dk = jnp.swapaxes(dk[:, :, : geo.num_s], 1, 2).astype(k.dtype)
    dv = jnp.swapaxes(dv[:, :, : geo.num_s], 1, 2).astype(v.dtype)
    return dq, dk, dv, d_params, None


_attend.defvjp(_attend_fwd, _attend_bwd)

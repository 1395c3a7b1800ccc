"""Multi-Token Attention as Pallas kernels shaped for the Triton (GPU) lowering: key-query conv and
head mixing before and after the softmax, causal and document masks, GQA, float32 accumulation.
Forward here; backward in pallas_gpu_backward.py; tile math (halos as shifted loads, clean and
exact tiles) in pallas_gpu_tiles.py; the post-softmax part in pallas_gpu_post.py, its halos
staged in memory in pallas_gpu_window.py; programs of several heads as loops over them in
pallas_gpu_heads.py.

Forward: a program (batch row, query block, head group) holds the heads its mixing joins (1
without mixing, c_h grouped, all H for [H, H]) and runs an online softmax over the key blocks up
to the causal end, writing the output and the row log-sum-exp; with a post part a second kernel
recomputes the probabilities from the log-sum-exp and writes A v. Block sizes and D must be powers
of two, at least 16, for Triton; interpret mode takes any.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp

from mta.attention import pallas_gpu_backward
from mta.attention.kernels import dense_mixing
from mta.attention.pallas_gpu_grid import call, pad_time, padded_inputs, scratch_spec
from mta.attention.pallas_gpu_heads import HeadLoop
from mta.attention.pallas_gpu_post import post_out_kernel
from mta.attention.pallas_gpu_tiles import Layout, Tiles, dot_nn

BLOCK_Q = 64
BLOCK_K = 64
# Query blocks of a program that holds more than 2 heads (the heads a mixing joins): each head's
# softmax state stays live, at 16 heads and 64-row blocks 256 KiB of float32, an SM's whole
# register file. 16-row blocks cut the release setting's register spills from 6.1 KB to 56 bytes
# per thread in the forward (scripts/gpu_kernel_ir.py --cubin; docs/benchmarks.md).
BLOCK_Q_MANY_HEADS = 16


def attention(
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
    interpret: bool = False,
):
    """q [B,T,H,D], k/v [B,S,K,D] (K divides H) -> [B,T,H,D] (v's dtype). kq_pre / kq_post
    [H, c_q, c_k], head_pre / head_post [H, H] (linear) or [H // c_h, c_h, c_h] (grouped) and
    segment_ids [B, T] (T == S) as in the reference; gradients w.r.t. all but segment_ids.
    block_q / block_k: None for default_blocks."""
    pre, post = _taps(kq_pre), _taps(kq_post)
    default_q, default_k = default_blocks(q.shape[2], head_pre, head_post)
    block_q = default_q if block_q is None else block_q
    block_k = default_k if block_k is None else block_k
    lay = Layout(
        q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], block_q, block_k, pre, post,
        _program_heads(q.shape[2], head_pre, head_post), _mixing_group(q.shape[2], head_pre),
        _mixing_group(q.shape[2], head_post), segment_ids is not None, interpret,
    )  # fmt: skip
    if pre[0] - 1 > block_q or pre[1] - 1 > block_k or lay.margin > min(block_q, block_k):
        raise ValueError(
            f"the GPU kernels read a halo of at most one block (and stage the post conv's in "
            f"{lay.margin} rows / columns): got kq_pre taps {pre}, kq_post taps {post}, "
            f"blocks {block_q} x {block_k}"
        )
    weights = dict(kq_pre=kq_pre, head_pre=head_pre, kq_post=kq_post, head_post=head_post)
    return _attend(lay, q, k, v, weights, segment_ids)


def _taps(kernel) -> tuple:
    return (1, 1) if kernel is None else tuple(kernel.shape[1:])


def _mixing_group(heads: int, mix) -> int:
    """Heads one group of a mixing joins: H for [H, H], c_h for [H // c_h, c_h, c_h]; 0: none."""
    return 0 if mix is None else heads if mix.ndim == 2 else mix.shape[1]


def _program_heads(heads: int, *mixings) -> int:
    """Heads per program: the consecutive heads the pre and post mixing join (1 without)."""
    return math.lcm(1, *(_mixing_group(heads, mix) or 1 for mix in mixings))


def default_blocks(heads: int, head_pre=None, head_post=None) -> tuple[int, int]:
    """(block_q, block_k) of the GPU kernels for H = heads and these mixings."""
    many = _program_heads(heads, head_pre, head_post) > 2
    return (BLOCK_Q_MANY_HEADS if many else BLOCK_Q), BLOCK_K


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(lay: Layout, q, k, v, weights, segment_ids):
    return forward(lay, padded_inputs(lay, q, k, v, weights, segment_ids))[0]


def _attend_fwd(lay, q, k, v, weights, segment_ids):
    out, lse = forward(lay, padded_inputs(lay, q, k, v, weights, segment_ids))
    return out, (q, k, v, weights, segment_ids, out, lse)


def _attend_bwd(lay, residuals, d_out):
    q, k, v, weights, segment_ids, out, lse = residuals
    inputs = padded_inputs(lay, q, k, v, weights, segment_ids)
    dq, dk, dv, d_dense = pallas_gpu_backward.backward(lay, inputs, out, lse, d_out)
    dq, dk, dv = (g.astype(x.dtype) for g, x in ((dq, q), (dk, k), (dv, v)))
    d_weights = {}
    for name, w in weights.items():
        if w is None:
            d_weights[name] = None
        elif name.startswith("kq"):
            d_weights[name] = d_dense[name].astype(w.dtype)
        else:  # the kernels saw the dense [H, H] form
            d_weights[name] = jax.vjp(dense_mixing, w)[1](d_dense[name].astype(w.dtype))[0]
    return dq, dk, dv, d_weights, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def forward(lay: Layout, inputs: dict):
    """-> out [B, T, H, D] (v's dtype), lse [B, H, rows] (padded like q, 0 on padding). With a
    post part the stats kernel writes lse only and a second kernel computes out from it."""
    batch, rows = inputs["q"].shape[0], lay.num_qb * lay.block_q
    group, bq = lay.group, lay.block_q
    out_spec = ((batch, lay.heads, rows, lay.dim), jnp.float32, (None, group, bq, lay.dim),
                lambda b, i, g: (b, g, i, 0))  # fmt: skip
    lse_spec = ((batch, lay.heads, rows), jnp.float32, (None, group, bq), lambda b, i, g: (b, g, i))
    if lay.post:
        (lse,) = call(lay, forward_kernel, False, inputs, [lse_spec], "mta_gpu_forward")
        lse = pad_time(lse, (lay.pad_rows, lay.margin))
        outputs = [out_spec, scratch_spec(lay, batch, lay.num_qb)]
        out, _ = call(lay, post_out_kernel, False, {**inputs, "lse": lse}, outputs, "mta_gpu_post")
    else:
        out, lse = call(lay, forward_kernel, False, inputs, [out_spec, lse_spec], "mta_gpu_forward")
        lse = pad_time(lse, (lay.pad_rows, lay.margin))
    out = jnp.swapaxes(out[:, :, : lay.num_t], 1, 2).astype(inputs["v"].dtype)
    return out, lse


def forward_kernel(tiles: Tiles, i0, heads, *refs):
    """Online softmax over the key blocks of query block i0: refs (o_ref [G, bq, D], lse_ref
    [G, bq]), or lse_ref alone with a post part (no A v: the post kernel makes the output)."""
    lay = tiles.lay
    bq = lay.block_q
    o_ref, lse_ref = (None, *refs) if lay.post else refs

    def step(kb, carry):
        j0 = kb * lay.block_k
        if lay.staged_heads:  # one head's logits code, in a loop (pallas_gpu_heads.py)
            loop = HeadLoop(tiles, heads)
            loop.logits(i0, j0, bq, lay.block_k)
            z = [loop.z[t, :, :] for t in range(len(heads))]
        else:
            z = [tiles.logits(h, i0, j0) for h in heads]
        y = tiles.mixed(heads, z)
        keep = tiles.allowed(i0, j0)
        new = []
        for h, y_h, (m, l_, acc) in zip(heads, y, carry, strict=True):
            x = jnp.where(keep, y_h, -jnp.inf)
            m_new = jnp.maximum(m, x.max(axis=1))
            shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            p = jnp.exp(x - shift[:, None])
            alpha = jnp.exp(m - shift)
            if o_ref is not None:
                v = tiles.cols("v", h, j0)
                acc = acc * alpha[:, None] + dot_nn(p.astype(v.dtype), v)
            new.append((m_new, l_ * alpha + p.sum(axis=1), acc))
        return tuple(new)

    start = tuple(
        (jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32),
         jnp.zeros((bq, lay.dim), jnp.float32))
        for _ in heads
    )  # fmt: skip
    final = jax.lax.fori_loop(0, lay.key_block_end(i0), step, start)
    for t, (m, l_, acc) in enumerate(final):
        seen = l_ > 0  # padding rows see no key: output 0, lse 0
        if o_ref is not None:
            o_ref[t, :, :] = acc / jnp.where(seen, l_, 1.0)[:, None]
        lse_ref[t, :] = jnp.where(seen, m + jnp.log(jnp.where(seen, l_, 1.0)), 0.0)

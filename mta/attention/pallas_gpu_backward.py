"""Backward of the Triton-shaped MTA kernels (pallas_gpu.py): kernels that recompute the
pre-softmax tiles from q, k and the forward's row log-sum-exp, with every shift of the
pre-softmax conv on the load side and no atomics (the post part: pallas_gpu_post.py).

With dz the gradient w.r.t. the conv output z and M_ab the mask of tap (a, b) (s = c_q - 1 - a,
d = b - r), the q.k products x[i - s, j + d] feed z[i, j], so

    dq[i - s] += scale theta[a, b] (M_ab * dz)[i, :] @ k[j + d]
    dk[j + d] += scale theta[a, b] (M_ab * dz)[:, j] @ q[i - s]
    dtheta[a, b] = scale sum_ij (M_ab * dz)[i, j] q[i - s] . k[j + d]

A query-major kernel keeps dz's rows in place and writes dq per row tap a to its own buffer
(dq_a[i], shifted and summed afterwards: dq[i'] = sum_a dq_a[i' + s_a]); a key-major kernel
does the same for dk per column tap b. On clean tiles the conv moves onto k (dq_a = dz @ sum_b
theta k[j + d_b]: c_q dots) or q (dk_b = dz^T @ sum_a theta q[i - s_a]: c_k dots), and dtheta
reads dz^T @ q[i - s_a] (c_q dots); other tiles take each masked tap on its own.
"""

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.scipy.linalg import block_diag

from mta.attention.pallas_gpu_grid import call, pad_time, scratch_spec, zero_heads
from mta.attention.pallas_gpu_heads import HeadLoop
from mta.attention.pallas_gpu_post import d_probs, post_delta_kernel, post_dv_kernel
from mta.attention.pallas_gpu_tiles import Layout, Tiles, dot_nn, dot_tn, pow2


def backward(lay: Layout, inputs: dict, out, lse, d_out):
    """inputs: pallas_gpu_grid.padded_inputs; out / d_out [B, T, H, D]; lse [B, H, rows] ->
    dq [B, T, H, D], dk / dv [B, S, K, D] and {kq_pre, head_pre, kq_post, head_post: gradient
    w.r.t. the kernels' float32 form (theta [H, c_q, c_k], dense mixing [H, H])}."""
    batch, group, dim = d_out.shape[0], lay.group, lay.dim
    (c_q, c_k), bq, bk = lay.taps, lay.block_q, lay.block_k
    rows, cols, f32 = lay.num_qb * bq, lay.num_kb * bk, jnp.float32
    inputs = {**inputs, "d_out": pad_time(jnp.swapaxes(d_out, 1, 2), lay.row_padding), "lse": lse}
    if lay.post:  # delta_i = sum_j P_ij dP_ij
        delta, _ = call(lay, post_delta_kernel, False, inputs, [
            ((batch, lay.heads, rows), f32, (None, group, bq), lambda b, i, g: (b, g, i)),
            scratch_spec(lay, batch, lay.num_qb),
        ], "mta_gpu_delta")  # fmt: skip
        delta = delta[:, :, : lay.num_t]
    else:  # = sum_d dO_id out_id when out = P v
        delta = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1).swapaxes(1, 2)
    inputs["delta"] = pad_time(delta, lay.row_padding)
    scratch = [scratch_spec(lay, batch, lay.num_qb)] if lay.post else []

    q_outs = [((batch, lay.heads, c_q, rows, dim), f32, (None, group, c_q, bq, dim),
               lambda b, i, g: (b, g, 0, i, 0))]  # fmt: skip
    if lay.conv:
        q_outs.append(_per_block((batch, lay.num_qb, lay.heads, pow2(c_q * c_k)), group))
    if lay.mixing:
        q_outs.append(_per_block((batch, lay.num_qb, lay.heads, pow2(group)), group))
    dq_parts = call(lay, dq_kernel, False, inputs, q_outs + scratch, "mta_gpu_dq")
    dv_spec = ((batch, lay.heads, cols, dim), f32, (None, group, bk, dim),
               lambda b, j, g: (b, g, j, 0))  # fmt: skip
    k_outs = [((batch, lay.heads, c_k, cols, dim), f32, (None, group, c_k, bk, dim),
               lambda b, j, g: (b, g, 0, j, 0))]  # fmt: skip
    k_outs += [scratch_spec(lay, batch, lay.num_kb)] if lay.post else [dv_spec]
    dks, dv = call(lay, dkv_kernel, True, inputs, k_outs, "mta_gpu_dkv")
    grads = {"kq_pre": None, "head_pre": None, "kq_post": None, "head_post": None}
    if lay.post:
        dv, *post_parts = call(lay, post_dv_kernel, True, inputs, [dv_spec] + [
            _per_block((batch, lay.num_kb, lay.heads, n), group) for n in _post_slots(lay)
        ] + [scratch_spec(lay, batch, lay.num_kb)], "mta_gpu_post_dv")  # fmt: skip
        post_parts = post_parts[:-1]
        if lay.post_taps != (1, 1):
            grads["kq_post"] = _taps_sum(post_parts[0], lay.heads, lay.post_taps)
        if lay.mixing_post:
            grads["head_post"] = _mixing_sum(post_parts[-1], group)

    dqs = _pad_taps(dq_parts[0], (0, c_q - 1))  # row i - s_a of tap a at i
    dq = sum(dqs[:, :, a, c_q - 1 - a : c_q - 1 - a + lay.num_t] for a in range(c_q))
    r = lay.r_pre
    dks = _pad_taps(dks, (r, r))  # column j + d_b of tap b at j + 2r - b
    dk = sum(dks[:, :, b, 2 * r - b : 2 * r - b + lay.num_s] for b in range(c_k))
    dv = dv[:, :, : lay.num_s]
    if lay.conv:
        grads["kq_pre"] = _taps_sum(dq_parts[1], lay.heads, lay.taps)
    if lay.mixing:
        grads["head_pre"] = _mixing_sum(dq_parts[2 if lay.conv else 1], group)
    return _by_token(dq), _by_token(_per_kv(lay, dk)), _by_token(_per_kv(lay, dv)), grads


def _post_slots(lay: Layout) -> list:
    """Lengths of post_dv_kernel's per-program sums: d theta_post, d mix_post (where present)."""
    out = [pow2(lay.post_taps[0] * lay.post_taps[1])] if lay.post_taps != (1, 1) else []
    return out + ([pow2(lay.group)] if lay.mixing_post else [])


def _taps_sum(parts, heads: int, taps: tuple):
    """Per-program sums [B, N, H, P] of flattened taps -> [H, c_q, c_k]."""
    return parts.sum(axis=(0, 1))[:, : taps[0] * taps[1]].reshape(heads, *taps)


def _mixing_sum(parts, group: int):
    """Per-program sums [B, N, H, P] with dW[g, h] at h - first head of g's group -> [H, H]."""
    return block_diag(*parts.sum(axis=(0, 1))[:, :group].reshape(-1, group, group))


def _pad_taps(x, widths):
    """Pads the time axis of per-tap sums [B, H, taps, time, D] by widths = (before, after)."""
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), widths, (0, 0)))


def _per_block(shape, group):
    """(shape, dtype, block, index) of a float32 [B, num_blocks, H, P] of per-program sums."""
    return shape, jnp.float32, (None, None, group, shape[-1]), lambda b, i, g: (b, i, g, 0)


def _per_kv(lay: Layout, x):
    """[B, H, S, D] per query head -> [B, K, S, D] summed over each kv head's query heads."""
    return x.reshape(x.shape[0], lay.kv_heads, lay.per_kv, *x.shape[2:]).sum(axis=2)


def _by_token(x):
    return jnp.swapaxes(x, 1, 2)


def dq_kernel(tiles: Tiles, i0, heads, dqs_ref, *refs):
    """Query block i0 over its key blocks: dqs_ref [G, c_q, bq, D] (dq per row tap), and the
    program's sums d_theta_ref [G, P] (taps flattened a * c_k + b) and d_mix_ref [G, P'] (dW[g,
    h] at h - first head), then the post part's scratch (where present)."""
    lay = tiles.lay
    c_q = lay.taps[0]
    refs = list(refs)
    scratch = refs.pop() if lay.post else None
    d_theta_ref = refs.pop(0) if lay.conv else None
    d_mix_ref = refs.pop(0) if lay.mixing else None
    for t in range(lay.group):
        for a in range(c_q):
            dqs_ref[t, a, :, :] = jnp.zeros((lay.block_q, lay.dim), jnp.float32)
    zero_heads((d_theta_ref, d_mix_ref), lay.group)

    def step(kb, carry):
        j0 = kb * lay.block_k
        if lay.staged_heads:
            loop = HeadLoop(tiles, heads, scratch)
            d_z = loop.d_logits(i0, j0, d_mix_ref=d_mix_ref)
            loop.each(lambda t, h: _dq_taps(tiles, t, h, i0, j0, _tile(lay, d_z, t), dqs_ref,
                                            d_theta_ref))  # fmt: skip
            return
        z = [tiles.logits(h, i0, j0) for h in heads]
        _, d_y = tiles.d_logits(heads, i0, j0, z, _d_probs(tiles, scratch, heads, i0, j0))
        for t, (h, d_z) in enumerate(zip(heads, d_y, strict=True)):  # no mixing: staged_heads
            _dq_taps(tiles, t, h, i0, j0, d_z, dqs_ref, d_theta_ref)

    lax.fori_loop(0, lay.key_block_end(i0), step, None)


def _dq_taps(tiles: Tiles, t, h, i0, j0, d_z, dqs_ref, d_theta_ref):
    """Adds head h's tile to dq per row tap and to dtheta."""
    lay, scale = tiles.lay, tiles.scale
    (c_q, c_k), r = lay.taps, lay.r_pre
    dtype = tiles.refs["q"].dtype
    d_z = d_z.astype(dtype)
    if not lay.conv:
        dqs_ref[t, 0, :, :] += dot_nn(d_z, tiles.cols("k", h, j0)) * scale
        return
    slots = lax.broadcasted_iota(jnp.int32, d_theta_ref.shape[-1:], 0)

    def clean(vec):
        def row_tap(a, vec):
            k_conv = tiles.k_conv(h, j0, a).astype(dtype)
            dqs_ref[t, a, :, :] += dot_nn(d_z, k_conv) * scale
            u = dot_tn(d_z, tiles.rows("q", h, i0, c_q - 1 - a))  # [bk, D]

            def col_tap(b, vec):
                k = tiles.cols("k", h, j0, b - r)
                return vec + jnp.where(slots == a * c_k + b, jnp.sum(k * u), 0.0)

            return lax.fori_loop(0, c_k, col_tap, vec)

        return lax.fori_loop(0, c_q, row_tap, vec)

    def exact(vec):
        def row_tap(a, vec):
            q = tiles.rows("q", h, i0, c_q - 1 - a)

            def col_tap(b, carry):
                acc, vec = carry
                masked = jnp.where(tiles.tap_mask(i0, j0, a, b), d_z, 0.0).astype(dtype)
                g = dot_nn(masked, tiles.cols("k", h, j0, b - r))
                vec = vec + jnp.where(slots == a * c_k + b, jnp.sum(q * g), 0.0)
                return acc + tiles.theta(h, a, b) * g, vec

            zeros = jnp.zeros((lay.block_q, lay.dim), jnp.float32)
            acc, vec = lax.fori_loop(0, c_k, col_tap, (zeros, vec))
            dqs_ref[t, a, :, :] += acc * scale
            return vec

        return lax.fori_loop(0, c_q, row_tap, vec)

    zeros = jnp.zeros(slots.shape, jnp.float32)
    d_theta_ref[t, :] += lax.cond(tiles.is_clean(i0, j0), clean, exact, zeros) * scale


def dkv_kernel(tiles: Tiles, j0, heads, dks_ref, last_ref):
    """Key block j0 over the query blocks that see it: dks_ref [G, c_k, bk, D] (dk per column
    tap, per query head); last_ref: dv [G, bk, D] (per query head), or with a post part the
    scratch (dv then comes from post_dv_kernel)."""
    lay = tiles.lay
    c_k = lay.taps[1]
    scratch, dv_ref = (last_ref, None) if lay.post else (None, last_ref)
    zero_heads((dv_ref,), lay.group)
    for t in range(lay.group):  # per tap: a [c_k, bk, D] block is not a Triton shape
        for b in range(c_k):
            dks_ref[t, b, :, :] = jnp.zeros((lay.block_k, lay.dim), jnp.float32)

    def step(qb, carry):
        i0 = qb * lay.block_q
        if lay.staged_heads:
            loop = HeadLoop(tiles, heads, scratch)
            d_z = loop.d_logits(i0, j0, dv_ref=dv_ref)
            loop.each(lambda t, h: _dk_taps(tiles, t, h, i0, j0, _tile(lay, d_z, t), dks_ref))
            return
        z = [tiles.logits(h, i0, j0) for h in heads]
        probs, d_y = tiles.d_logits(heads, i0, j0, z, _d_probs(tiles, scratch, heads, i0, j0))
        for t, (g, p) in enumerate(zip(heads, probs, strict=True)):
            if dv_ref is not None:
                d_out = tiles.rows("d_out", g, i0)
                dv_ref[t, :, :] += dot_tn(p.astype(d_out.dtype), d_out)
        for t, (h, d_z) in enumerate(zip(heads, d_y, strict=True)):  # no mixing: staged_heads
            _dk_taps(tiles, t, h, i0, j0, d_z, dks_ref)

    lax.fori_loop(lay.query_block_start(j0), lay.num_qb, step, None)


def _tile(lay: Layout, buf, t):
    """Program head t's [bq, bk] tile at the corner of a HeadLoop buffer."""
    return buf[t, pl.ds(0, lay.block_q), pl.ds(0, lay.block_k)]


def _d_probs(tiles: Tiles, scratch, heads: list, i0, j0) -> list:
    """dP, the gradient w.r.t. the probabilities: dO v^T, or through the post part."""
    if scratch is None:
        return tiles.d_attention(heads, i0, j0)
    return d_probs(tiles, scratch, heads, i0, j0)


def _dk_taps(tiles: Tiles, t, h, i0, j0, d_z, dks_ref):
    """Adds head h's tile to dk per column tap."""
    lay, scale = tiles.lay, tiles.scale
    (c_q, c_k) = lay.taps
    dtype = tiles.refs["q"].dtype
    d_z = d_z.astype(dtype)
    if not lay.conv:
        dks_ref[t, 0, :, :] += dot_tn(d_z, tiles.rows("q", h, i0)) * scale
        return

    def clean():
        def col_tap(b, carry):
            q_conv = tiles.q_conv(h, i0, b).astype(dtype)
            dks_ref[t, b, :, :] += dot_tn(d_z, q_conv) * scale

        lax.fori_loop(0, c_k, col_tap, None)

    def exact():
        def row_tap(a, carry):
            q = tiles.rows("q", h, i0, c_q - 1 - a)

            def col_tap(b, carry):
                masked = jnp.where(tiles.tap_mask(i0, j0, a, b), d_z, 0.0).astype(dtype)
                dks_ref[t, b, :, :] += tiles.theta(h, a, b) * dot_tn(masked, q) * scale

            lax.fori_loop(0, c_k, col_tap, None)

        lax.fori_loop(0, c_q, row_tap, None)

    lax.cond(tiles.is_clean(i0, j0), clean, exact)

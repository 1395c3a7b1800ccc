"""Backward of the Triton-shaped MTA kernels (pallas_gpu.py): two kernels that recompute the
pre-softmax tiles from q, k and the forward's row log-sum-exp, with every shift on the load side
and no atomics.

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
from jax.scipy.linalg import block_diag

from mta.attention.pallas_gpu_grid import call, pad_time
from mta.attention.pallas_gpu_tiles import Layout, Tiles, dot_nn, dot_tn


def backward(lay: Layout, inputs: dict, out, lse, d_out):
    """inputs: pallas_gpu_grid.padded_inputs; out / d_out [B, T, H, D]; lse [B, H, rows] ->
    dq [B, T, H, D], dk / dv [B, S, K, D], dtheta [H, c_q, c_k] and d mix [H, H] (float32;
    None where absent)."""
    d_out_h = jnp.swapaxes(d_out, 1, 2)
    delta = jnp.sum(d_out_h.astype(jnp.float32) * jnp.swapaxes(out, 1, 2), axis=-1)
    inputs = {
        **inputs,
        "d_out": pad_time(d_out_h, lay.row_padding),
        "lse": lse,
        "delta": pad_time(delta, lay.row_padding),
    }
    batch, group, dim = d_out.shape[0], lay.group, lay.dim
    (c_q, c_k), bq, bk = lay.taps, lay.block_q, lay.block_k
    rows, cols = lay.num_qb * bq, lay.num_kb * bk
    f32 = jnp.float32
    q_outs = [((batch, lay.heads, c_q, rows, dim), f32, (None, group, c_q, bq, dim),
               lambda b, i, g: (b, g, 0, i, 0))]  # fmt: skip
    if lay.conv:
        q_outs.append(_per_block((batch, lay.num_qb, lay.heads, _pow2(c_q * c_k)), group))
    if lay.mixing:
        q_outs.append(_per_block((batch, lay.num_qb, lay.heads, _pow2(group)), group))
    dq_parts = call(lay, dq_kernel, False, inputs, q_outs, "mta_pre_gpu_dq")
    dks, dv = call(lay, dkv_kernel, True, inputs, [
        ((batch, lay.heads, c_k, cols, dim), f32, (None, group, c_k, bk, dim),
         lambda b, j, g: (b, g, 0, j, 0)),
        ((batch, lay.heads, cols, dim), f32, (None, group, bk, dim), lambda b, j, g: (b, g, j, 0)),
    ], "mta_pre_gpu_dkv")  # fmt: skip

    dqs = _pad_taps(dq_parts[0], (0, c_q - 1))  # row i - s_a of tap a at i
    dq = sum(dqs[:, :, a, c_q - 1 - a : c_q - 1 - a + lay.num_t] for a in range(c_q))
    r = lay.pad_cols
    dks = _pad_taps(dks, (r, r))  # column j + d_b of tap b at j + 2r - b
    dk = sum(dks[:, :, b, 2 * r - b : 2 * r - b + lay.num_s] for b in range(c_k))
    dv = dv[:, :, : lay.num_s]
    d_theta = d_mix = None
    if lay.conv:
        d_theta = dq_parts[1].sum(axis=(0, 1))[:, : c_q * c_k].reshape(lay.heads, c_q, c_k)
    if lay.mixing:
        blocks = dq_parts[-1].sum(axis=(0, 1))[:, :group].reshape(-1, group, group)
        d_mix = block_diag(*blocks)
    return _by_token(dq), _by_token(_per_kv(lay, dk)), _by_token(_per_kv(lay, dv)), d_theta, d_mix


def _pad_taps(x, widths):
    """Pads the time axis of per-tap sums [B, H, taps, time, D] by widths = (before, after)."""
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), widths, (0, 0)))


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _per_block(shape, group):
    """(shape, dtype, block, index) of a float32 [B, num_blocks, H, P] of per-program sums."""
    return shape, jnp.float32, (None, None, group, shape[-1]), lambda b, i, g: (b, i, g, 0)


def _per_kv(lay: Layout, x):
    """[B, H, S, D] per query head -> [B, K, S, D] summed over each kv head's query heads."""
    return x.reshape(x.shape[0], lay.kv_heads, lay.per_kv, *x.shape[2:]).sum(axis=2)


def _by_token(x):
    return jnp.swapaxes(x, 1, 2)


def dq_kernel(tiles: Tiles, i0, heads, dqs_ref, *grad_refs):
    """Query block i0 over its key blocks: dqs_ref [G, c_q, bq, D] (dq per row tap), and the
    program's sums d_theta_ref [G, P] (taps flattened a * c_k + b) and d_mix_ref [G, P'] (dW[g,
    h] at h - first head)."""
    lay = tiles.lay
    c_q = lay.taps[0]
    d_theta_ref = grad_refs[0] if lay.conv else None
    d_mix_ref = grad_refs[-1] if lay.mixing else None
    for t in range(lay.group):
        for a in range(c_q):
            dqs_ref[t, a, :, :] = jnp.zeros((lay.block_q, lay.dim), jnp.float32)
        for ref in (d_theta_ref, d_mix_ref):
            if ref is not None:
                ref[t, :] = jnp.zeros(ref.shape[-1:], jnp.float32)

    def step(kb, carry):
        j0 = kb * lay.block_k
        z = [tiles.logits(h, i0, j0) for h in heads]
        _, d_y = tiles.d_logits(heads, i0, j0, z)
        if lay.mixing:
            slots = lax.broadcasted_iota(jnp.int32, d_mix_ref.shape[-1:], 0)
            for t, d in enumerate(d_y):
                terms = [jnp.where(slots == u, jnp.sum(d * z_u), 0.0) for u, z_u in enumerate(z)]
                d_mix_ref[t, :] += sum(terms[1:], terms[0])
        for t, (h, d_z) in enumerate(zip(heads, tiles.unmixed(heads, d_y), strict=True)):
            _dq_taps(tiles, t, h, i0, j0, d_z, dqs_ref, d_theta_ref)

    lax.fori_loop(0, lay.key_block_end(i0), step, None)


def _dq_taps(tiles: Tiles, t, h, i0, j0, d_z, dqs_ref, d_theta_ref):
    """Adds head h's tile to dq per row tap and to dtheta."""
    lay, scale = tiles.lay, tiles.scale
    (c_q, c_k), r = lay.taps, lay.pad_cols
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
            for b in range(c_k):
                k = tiles.cols("k", h, j0, b - r)
                vec = vec + jnp.where(slots == a * c_k + b, jnp.sum(k * u), 0.0)
            return vec

        return lax.fori_loop(0, c_q, row_tap, vec)

    def exact(vec):
        def row_tap(a, vec):
            q = tiles.rows("q", h, i0, c_q - 1 - a)
            acc = jnp.zeros((lay.block_q, lay.dim), jnp.float32)
            for b in range(c_k):
                masked = jnp.where(tiles.tap_mask(i0, j0, a, b), d_z, 0.0).astype(dtype)
                g = dot_nn(masked, tiles.cols("k", h, j0, b - r))
                acc = acc + tiles.theta(h, a, b) * g
                vec = vec + jnp.where(slots == a * c_k + b, jnp.sum(q * g), 0.0)
            dqs_ref[t, a, :, :] += acc * scale
            return vec

        return lax.fori_loop(0, c_q, row_tap, vec)

    zeros = jnp.zeros(slots.shape, jnp.float32)
    d_theta_ref[t, :] += lax.cond(tiles.is_clean(i0, j0), clean, exact, zeros) * scale


def dkv_kernel(tiles: Tiles, j0, heads, dks_ref, dv_ref):
    """Key block j0 over the query blocks that see it: dks_ref [G, c_k, bk, D] (dk per column
    tap, per query head) and dv_ref [G, bk, D] (per query head)."""
    lay = tiles.lay
    c_k = lay.taps[1]
    for t in range(lay.group):
        dv_ref[t, :, :] = jnp.zeros((lay.block_k, lay.dim), jnp.float32)
        for b in range(c_k):
            dks_ref[t, b, :, :] = jnp.zeros((lay.block_k, lay.dim), jnp.float32)

    def step(qb, carry):
        i0 = qb * lay.block_q
        z = [tiles.logits(h, i0, j0) for h in heads]
        probs, d_y = tiles.d_logits(heads, i0, j0, z)
        for t, (g, p) in enumerate(zip(heads, probs, strict=True)):
            d_out = tiles.rows("d_out", g, i0)
            dv_ref[t, :, :] += dot_tn(p.astype(d_out.dtype), d_out)
        for t, (h, d_z) in enumerate(zip(heads, tiles.unmixed(heads, d_y), strict=True)):
            _dk_taps(tiles, t, h, i0, j0, d_z, dks_ref)

    lax.fori_loop(lay.query_block_start(j0), lay.num_qb, step, None)


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
            for b in range(c_k):
                masked = jnp.where(tiles.tap_mask(i0, j0, a, b), d_z, 0.0).astype(dtype)
                dks_ref[t, b, :, :] += tiles.theta(h, a, b) * dot_tn(masked, q) * scale

        lax.fori_loop(0, c_q, row_tap, None)

    lax.cond(tiles.is_clean(i0, j0), clean, exact)

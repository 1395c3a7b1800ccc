"""The pre-softmax key-query convolution computed from q and k, without convolving a T x S map.

The convolved logits are a sum of c_q * c_k shifted dot products,

    conv(mask_0(X))[i, j] = sum_{a,b} theta[a, b] [allowed] q[i - (c_q-1) + a] . k[j - r + b]

(X = q k^T / sqrt(D), r = (c_k - 1) // 2, out-of-range rows of q and k are 0). Without the mask
the sum is bilinear, so it is ONE matmul over a widened head dimension: the query taps go into the
queries and the key taps, weighted by theta, into the keys (or the other way round, whichever
kernel side is shorter):

    F = Qcat Kcat^T,  Qcat[i] = [q[i - (c_q-1) + a]]_a,  Kcat[j] = [sum_b theta[a,b] k[j-r+b]]_a

which costs min(c_q, c_k) times the plain logits matmul instead of c_q * c_k passes over T x S.
The causal zero-mask only removes taps that read a future key (j' > i'), and for an allowed output
(j <= i) those lie within W = r + c_q - 1 diagonals of the main one. There the output is
recomputed from the allowed taps alone ([B, H, T] dot products of nearby q and k rows) and
selected in place of F, so no future key ever enters an allowed output, not even as a rounding
error or through a gradient.

Exact for causal masks without documents (segment_ids None); packed documents take the
convolution path of conv.py. Outputs at masked (i, j) are left unspecified: the caller masks them.
"""

import jax
import jax.numpy as jnp

from mta.attention.core import check_heads
from mta.attention.kernels import kq_taps


def conv_logits(
    q_BTHD: jax.Array, k_BSKD: jax.Array, kernel_HQK: jax.Array, num_cols: int | None = None
) -> jax.Array:
    """conv(mask_0(q k^T / sqrt(D))) with a [H, c_q, c_k] kernel: -> [B, H, T, num_cols] float32.

    q [B, T, H, D] are the last T of S positions; k [B, S, K, D] with K dividing H. Equal to
    key_query_conv(where(causal, logits, 0), kernel) wherever the causal mask allows (j <= i);
    num_cols >= S (default S) widens the map, its columns from S on are unspecified.
    """
    num_heads = q_BTHD.shape[2]
    kq_taps(kernel_HQK, num_heads, "kernel_HQK")
    group = check_heads(num_heads, k_BSKD.shape[2])
    c_q, c_k = kernel_HQK.shape[1:]
    r = (c_k - 1) // 2
    scale = q_BTHD.shape[-1] ** -0.5
    q = q_BTHD.astype(jnp.float32) * scale
    k = jnp.repeat(k_BSKD.astype(jnp.float32), group, axis=2)  # [B, S, H, D]
    theta = kernel_HQK.astype(jnp.float32)
    num_q, num_k = q.shape[1], k.shape[1]
    num_cols = num_k if num_cols is None else num_cols

    # q_taps[a][i] = q[i - (c_q-1) + a]; k_taps[b][j] = k[j - r + b] (zero outside)
    q_pad = jnp.pad(q, ((0, 0), (c_q - 1, 0), (0, 0), (0, 0)))
    k_pad = jnp.pad(k, ((0, 0), (r, r + num_cols - num_k), (0, 0), (0, 0)))
    q_taps = [q_pad[:, a : a + num_q] for a in range(c_q)]
    k_taps = [k_pad[:, b : b + num_cols] for b in range(c_k)]
    if c_q <= c_k:  # query taps plain, key taps weighted: widen by c_q
        wide_q = q_taps
        wide_k = [_weighted(k_taps, theta[:, a, :]) for a in range(c_q)]
    else:  # key taps plain, query taps weighted: widen by c_k
        wide_q = [_weighted(q_taps, theta[:, :, b]) for b in range(c_k)]
        wide_k = k_taps
    full_BHTS = jnp.einsum(
        "bthd,bshd->bhts",
        jnp.concatenate(wide_q, axis=-1),
        jnp.concatenate(wide_k, axis=-1),
        preferred_element_type=jnp.float32,
    )
    return _with_exact_band(full_BHTS, q, k, theta, num_k - num_q)


def _weighted(taps: list, theta_HN: jax.Array) -> jax.Array:
    """sum_n theta[h, n] * taps[n] over the N taps: [B, L, H, D] each -> [B, L, H, D]."""
    return sum(tap * theta_HN[None, None, :, n, None] for n, tap in enumerate(taps))


def _with_exact_band(full_BHTS, q, k, theta, offset: int) -> jax.Array:
    """full with its W diagonals next to the causal boundary (j = i + offset - d, d < W)
    replaced by sums over the allowed taps only, so no future key enters any allowed output
    (selected, not subtracted: causality holds exactly, gradients included).

    For output (i, j) with d = i + offset - j, tap (a, b) reads query row i' = i - (c_q-1) + a
    and key j' = i' + offset + e with e = b - a + (c_q-1) - r - d; it is allowed iff e <= 0.
    """
    _, c_q, c_k = theta.shape
    r = (c_k - 1) // 2
    width = r + c_q - 1
    if width == 0:  # a 1 x 1 kernel: every tap is the output's own logit
        return full_BHTS
    num_q, num_cols = q.shape[1], full_BHTS.shape[3]
    # near[e][i'] = q[i'] . k[i' + offset + e] for e = 1 - width - r .. 0 (k zero before 0)
    lowest = 1 - width - r
    k_pad = jnp.pad(k, ((0, 0), (-lowest, 0), (0, 0), (0, 0)))
    near = {
        e: jnp.einsum("bthd,bthd->bht", q, k_pad[:, offset + e - lowest :][:, :num_q])
        for e in range(lowest, 1)
    }
    band = []  # band[d][b, h, i]: the output at (i, i + offset - d)
    for d in range(width):
        band_BHT = jnp.zeros(q.shape[:1] + q.shape[2:3] + q.shape[1:2], jnp.float32)
        for a in range(c_q):
            taps = [b for b in range(c_k) if b - a + (c_q - 1) - r - d <= 0]
            if not taps:
                continue
            row_BHT = sum(theta[None, :, a, b, None] * near[b - a + c_q - 1 - r - d] for b in taps)
            shift = c_q - 1 - a  # query row i' = i - shift (zero before the first query)
            band_BHT = band_BHT + jnp.pad(row_BHT, ((0, 0), (0, 0), (shift, 0)))[:, :, :num_q]
        band.append(band_BHT)
    band_BHTS = _diagonals_to_dense(jnp.stack(band, axis=-1), num_cols, offset)
    diag_TS = jnp.arange(num_q)[:, None] + offset - jnp.arange(num_cols)[None, :]
    return jnp.where((diag_TS >= 0) & (diag_TS < width), band_BHTS, full_BHTS)


def _diagonals_to_dense(band_BHTW, num_keys: int, offset: int) -> jax.Array:
    """[B, H, T, W] -> [B, H, T, S] with band[..., i, d] at (i, i + offset - d), 0 elsewhere.

    The skew trick: rows of length N + 1 read back as rows of length N shift row i right by
    i, so diagonals become columns without a gather or scatter (cheap both ways in autodiff).
    """
    *lead, num_q, width = band_BHTW.shape
    n = num_q + width - 1  # column J = i + c holds diagonal c = W - 1 - d
    rows = jnp.pad(band_BHTW[..., ::-1], [(0, 0)] * len(lead) + [(0, 0), (0, n + 1 - width)])
    skewed = rows.reshape(*lead, num_q * (n + 1))[..., : num_q * n].reshape(*lead, num_q, n)
    first = width - 1 - offset  # column J of key 0
    if first < 0:
        skewed = jnp.pad(skewed, [(0, 0)] * len(lead) + [(0, 0), (-first, 0)])
        first = 0
    skewed = jnp.pad(skewed, [(0, 0)] * len(lead) + [(0, 0), (0, max(0, first + num_keys - n))])
    return skewed[..., first : first + num_keys]

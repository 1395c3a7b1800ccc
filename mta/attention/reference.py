"""Multi-Token Attention as the paper writes it: the equations in order, plain jnp, no tricks.

    X = q k^T / sqrt(D)                                   logits              [B, H, T, S]
    X = mask_0(X)                                         zero future and foreign keys
    X = conv_pre(X)                                       key-query conv, per head
    X = mix_pre(X)                                        head mixing (or one 3-D conv)
    A = softmax(mask_-inf(X))                             over keys, float32
    A = conv_post(A)                                      key-query conv on the weights
    A = mix_post(A)                                       head mixing of the weights
    A = mask_0(A)                                         rows are not renormalised
    out = A v                                                                 [B, T, H, D]

This is impl="reference" of mta.attention.multi_token_attention and the oracle every faster
implementation is tested against. It materialises every [B, H, T, S] map and is differentiated
by plain autodiff (forward and reverse mode). Shapes, alignment and masks: docs/mta.md.

A convolution tap along queries never reads a row of another document (segment_ids): it reads
0 there, as if the document were run alone. Along keys no such rule is needed, because mask_0
has already zeroed every key outside the query's document.
"""

import jax
import jax.numpy as jnp
from einops import rearrange

from mta.attention.core import causal_mask, check_heads, check_segments
from mta.attention.kernels import KernelSpec


def multi_token_attention_reference(
    q, k, v, kq_pre=None, head_pre=None, kq_post=None, head_post=None, segment_ids=None
) -> jax.Array:
    """q [B,T,H,D], k/v [B,S,K,D] (K divides H) -> [B,T,H,D] in v's dtype.

    Kernels in the layouts of mta/attention/kernels.py (any may be None); segment_ids [B, T]
    (S == T) keeps attention and convolutions inside documents. Queries are the last T of S.
    """
    spec = KernelSpec.of(q.shape[2], kq_pre, head_pre, kq_post, head_post)
    check_segments(segment_ids, q.shape, k.shape)
    group = check_heads(q.shape[2], k.shape[2])
    k = jnp.repeat(k.astype(jnp.float32), group, axis=2)  # one key/value head per query head
    v_BSHD = jnp.repeat(v.astype(jnp.float32), group, axis=2)
    mask_B1TS = causal_mask(q.shape[1], k.shape[1], segment_ids)

    # logits: b t h d, b s h d -> b h t s
    x = jnp.einsum("bthd,bshd->bhts", q.astype(jnp.float32), k) / jnp.sqrt(q.shape[-1])
    if spec.pre_conv:
        x = jnp.where(mask_B1TS, x, 0.0)  # mask_0
    if kq_pre is not None:
        x = key_query_conv(x, kq_pre, segment_ids)
    if spec.head_pre == "conv3d":
        x = conv3d_heads(x, head_pre, segment_ids)
    elif head_pre is not None:
        x = mix_heads(x, head_pre)
    a = jax.nn.softmax(jnp.where(mask_B1TS, x, -jnp.inf), axis=-1)  # mask_-inf, softmax
    if kq_post is not None:
        a = key_query_conv(a, kq_post, segment_ids)
    if head_post is not None:
        a = mix_heads(a, head_post)
    if spec.post:
        a = jnp.where(mask_B1TS, a, 0.0)  # mask_0: the post conv spreads weight onto the future
    # out = A v: b h t s, b s h d -> b t h d
    return jnp.einsum("bhts,bshd->bthd", a, v_BSHD).astype(v.dtype)


def key_query_conv(x_BHTS, theta_HQK, segment_ids=None) -> jax.Array:
    """out[h, i, j] = sum_{a, b} theta[h, a, b] x[h, i - (c_q - 1) + a, j - r + b], r = (c_k-1)//2,
    reads outside x are 0: [B, H, T, S] -> [B, H, T, S] float32."""
    _, c_q, c_k = theta_HQK.shape
    num_queries, num_keys = x_BHTS.shape[2:]
    r = (c_k - 1) // 2
    padded = jnp.pad(x_BHTS.astype(jnp.float32), ((0, 0), (0, 0), (c_q - 1, 0), (r, r)))
    out = jnp.zeros(x_BHTS.shape, jnp.float32)
    for a in range(c_q):
        rows = padded[:, :, a : a + num_queries] * _same_document(segment_ids, c_q - 1 - a)
        for b in range(c_k):
            out += theta_HQK[None, :, a, b, None, None] * rows[:, :, :, b : b + num_keys]
    return out


def mix_heads(x_BHTS, weights) -> jax.Array:
    """Head mixing at every (query, key): [B, H, T, S] -> [B, H, T, S] float32.

    weights [H, H] (linear): new[g] = sum_h W[g, h] x[h];
    weights [H // c_h, c_h, c_h] (grouped, [group, in, out]):
        new[n c_h + o] = sum_i x[n c_h + i] W[n, i, o].
    """
    x = x_BHTS.astype(jnp.float32)
    if weights.ndim == 2:
        return jnp.einsum("gh,bhts->bgts", weights, x)
    x_BNITS = rearrange(x, "b (n i) t s -> b n i t s", n=weights.shape[0])
    return rearrange(jnp.einsum("bnits,nio->bnots", x_BNITS, weights), "b n o t s -> b (n o) t s")


def conv3d_heads(x_BHTS, kernel_NIOQK, segment_ids=None) -> jax.Array:
    """The full 3-D pre-softmax conv, inside each group of c_h heads: -> [B, H, T, S] float32,
    out[n c_h + o, i, j] =
        sum_{in, a, b} kernel[n, in, o, a, b] x[n c_h + in, i - (c_q - 1) + a, j - r + b]."""
    num_groups, _, _, c_q, c_k = kernel_NIOQK.shape
    num_queries, num_keys = x_BHTS.shape[2:]
    r = (c_k - 1) // 2
    padded = jnp.pad(x_BHTS.astype(jnp.float32), ((0, 0), (0, 0), (c_q - 1, 0), (r, r)))
    out = 0.0
    for a in range(c_q):
        rows = padded[:, :, a : a + num_queries] * _same_document(segment_ids, c_q - 1 - a)
        rows = rearrange(rows, "b (n i) t s -> b n i t s", n=num_groups)
        for b in range(c_k):
            window = rows[..., b : b + num_keys]
            out += jnp.einsum("bnits,nio->bnots", window, kernel_NIOQK[..., a, b])
    return rearrange(out, "b n o t s -> b (n o) t s")


def _same_document(segment_ids, shift: int):
    """1 where query row i - shift is in query i's document (or no documents), else 0:
    [B, 1, T, 1] (a scalar 1 without segment_ids). Rows before the first read the padding."""
    if segment_ids is None or shift == 0:
        return 1.0
    earlier_BT = jnp.pad(segment_ids, ((0, 0), (shift, 0)), constant_values=-1)[:, :-shift]
    return (earlier_BT == segment_ids)[:, None, :, None].astype(jnp.float32)

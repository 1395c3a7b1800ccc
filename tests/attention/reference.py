"""Slow, obviously-correct float64 numpy loops written from docs/mta.md (no jax, no lax).

Layouts as in mta.attention: q [B,T,H,D], k/v [B,S,K,D], logits [B,H,T,S]; query i sits at key
position i + S - T; query head h reads key/value head h // (H // K).
Documents (segment_ids) are handled the most literal way: each document is cut out and run alone.
"""

import math

import numpy as np


def logits(q, k):
    """[B,T,H,D], [B,S,K,D] -> [B,H,T,S]: q . k / sqrt(D)."""
    num_b, num_t, num_h, dim = q.shape
    num_s, num_k = k.shape[1], k.shape[2]
    out = np.zeros((num_b, num_h, num_t, num_s))
    for b in range(num_b):
        for h in range(num_h):
            kv = h // (num_h // num_k)
            for i in range(num_t):
                for j in range(num_s):
                    total = 0.0
                    for d in range(dim):
                        total += float(q[b, i, h, d]) * float(k[b, j, kv, d])
                    out[b, h, i, j] = total / math.sqrt(dim)
    return out


def allowed(num_t, num_s, i, j):
    """Causal rule: query i (at key position i + S - T) may see key j."""
    return j <= i + num_s - num_t


def zero_mask(x):
    """Zeroes the causally masked (query, key) pairs of [B,H,T,S]."""
    out = np.array(x, dtype=np.float64)
    num_t, num_s = x.shape[2], x.shape[3]
    for i in range(num_t):
        for j in range(num_s):
            if not allowed(num_t, num_s, i, j):
                out[:, :, i, j] = 0.0
    return out


def softmax(x):
    """Masked softmax over keys of [B,H,T,S]; masked pairs get probability 0."""
    num_b, num_h, num_t, num_s = x.shape
    out = np.zeros(x.shape)
    for b in range(num_b):
        for h in range(num_h):
            for i in range(num_t):
                keys = [j for j in range(num_s) if allowed(num_t, num_s, i, j)]
                top = max(x[b, h, i, j] for j in keys)
                exps = {j: math.exp(x[b, h, i, j] - top) for j in keys}
                total = sum(exps.values())
                for j in keys:
                    out[b, h, i, j] = exps[j] / total
    return out


def read(x, b, h, i, j):
    """x[b, h, i, j], or 0 outside the array."""
    if 0 <= i < x.shape[2] and 0 <= j < x.shape[3]:
        return x[b, h, i, j]
    return 0.0


def kq_conv(x, theta):
    """out[h,i,j] = sum_a sum_b theta[h,a,b] x[h, i-(c_q-1)+a, j-(c_k-1)/2+b]."""
    num_b, num_h, num_t, num_s = x.shape
    _, c_q, c_k = theta.shape
    out = np.zeros(x.shape)
    for b in range(num_b):
        for h in range(num_h):
            for i in range(num_t):
                for j in range(num_s):
                    for ta in range(c_q):
                        for tb in range(c_k):
                            xi, xj = i - (c_q - 1) + ta, j - (c_k - 1) // 2 + tb
                            out[b, h, i, j] += theta[h, ta, tb] * read(x, b, h, xi, xj)
    return out


def mix_linear(x, w):
    """new[g] = sum_h W[g, h] x[h]."""
    num_b, num_h, num_t, num_s = x.shape
    out = np.zeros(x.shape)
    for b in range(num_b):
        for g in range(num_h):
            for h in range(num_h):
                for i in range(num_t):
                    for j in range(num_s):
                        out[b, g, i, j] += w[g, h] * x[b, h, i, j]
    return out


def mix_grouped(x, w):
    """new[n*c_h + o] = sum_i x[n*c_h + i] W[n, i, o]."""
    num_groups, c_h, _ = w.shape
    out = np.zeros(x.shape)
    for n in range(num_groups):
        for o in range(c_h):
            for i in range(c_h):
                out[:, n * c_h + o] += x[:, n * c_h + i] * w[n, i, o]
    return out


def mix(x, w):
    """Linear ([H,H]) or grouped ([H/c_h,c_h,c_h]) head mixing."""
    return mix_linear(x, w) if w.ndim == 2 else mix_grouped(x, w)


def conv3d(x, w):
    """3-D conv over (heads, queries, keys), w [H/c_h, c_h(in), c_h(out), c_q, c_k]:

    out[n*c_h+o, i, j] = sum_in sum_a sum_b w[n,in,o,a,b] x[n*c_h+in, i-(c_q-1)+a, j-(c_k-1)/2+b].
    """
    num_b, _, num_t, num_s = x.shape
    num_groups, c_h, _, c_q, c_k = w.shape
    out = np.zeros(x.shape)
    for b in range(num_b):
        for n in range(num_groups):
            for o in range(c_h):
                for i in range(num_t):
                    for j in range(num_s):
                        total = 0.0
                        for hin in range(c_h):
                            for ta in range(c_q):
                                for tb in range(c_k):
                                    xi, xj = i - (c_q - 1) + ta, j - (c_k - 1) // 2 + tb
                                    value = read(x, b, n * c_h + hin, xi, xj)
                                    total += w[n, hin, o, ta, tb] * value
                        out[b, n * c_h + o, i, j] = total
    return out


def weight_values(p, v):
    """[B,H,T,S], [B,S,K,D] -> [B,T,H,D]."""
    num_b, num_h, num_t, num_s = p.shape
    num_k, dim = v.shape[2], v.shape[3]
    out = np.zeros((num_b, num_t, num_h, dim))
    for b in range(num_b):
        for h in range(num_h):
            kv = h // (num_h // num_k)
            for i in range(num_t):
                for j in range(num_s):
                    out[b, i, h, :] += p[b, h, i, j] * v[b, j, kv, :]
    return out


def _f64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def documents(segment_ids_T):
    """Contiguous runs of equal ids: list of (start, end)."""
    runs, start = [], 0
    for t in range(1, len(segment_ids_T) + 1):
        if t == len(segment_ids_T) or segment_ids_T[t] != segment_ids_T[start]:
            runs.append((start, t))
            start = t
    return runs


def per_document(fn, q, k, v, segment_ids, *args):
    """Runs fn(q, k, v, *args) on each document of each row alone; needs S == T."""
    if segment_ids is None:
        return fn(q, k, v, *args)
    outs = []
    for b in range(q.shape[0]):
        row = [
            fn(q[b : b + 1, s:e], k[b : b + 1, s:e], v[b : b + 1, s:e], *args)
            for s, e in documents(list(np.asarray(segment_ids[b])))
        ]
        outs.append(np.concatenate(row, axis=1))
    return np.concatenate(outs, axis=0)


def causal_attention(q, k, v, segment_ids=None):
    """Plain causal attention -> [B,T,H,D] float64."""
    q, k, v = _f64(q, k, v)
    return per_document(_causal, q, k, v, segment_ids)


def _causal(q, k, v):
    return weight_values(softmax(logits(q, k)), v)


def multi_token_attention(
    q, k, v, kq_pre=None, head_pre=None, kq_post=None, head_post=None, segment_ids=None
):
    """docs/mta.md sections 1-2 step by step -> [B,T,H,D] float64 (5-D head_pre: the 3-D conv)."""
    q, k, v, kq_pre, head_pre, kq_post, head_post = _f64(
        q, k, v, kq_pre, head_pre, kq_post, head_post
    )
    kernels = (kq_pre, head_pre, kq_post, head_post)
    return per_document(_mta, q, k, v, segment_ids, *kernels)


def attention_weights(q, k, kq_pre=None, head_pre=None, kq_post=None, head_post=None):
    """The attention map of docs/mta.md sections 1-2 (one document per row) -> [B,H,T,S] float64."""
    return _weights(*_f64(q, k, kq_pre, head_pre, kq_post, head_post))


def _mta(q, k, v, kq_pre, head_pre, kq_post, head_post):
    return weight_values(_weights(q, k, kq_pre, head_pre, kq_post, head_post), v)


def _weights(q, k, kq_pre, head_pre, kq_post, head_post):
    x = logits(q, k)
    full_3d = head_pre is not None and head_pre.ndim == 5
    if kq_pre is not None or full_3d:
        x = zero_mask(x)
    if kq_pre is not None:
        x = kq_conv(x, kq_pre)
    if full_3d:
        x = conv3d(x, head_pre)
    elif head_pre is not None:
        x = mix(x, head_pre)
    p = softmax(x)  # masks to -inf itself
    if kq_post is not None:
        p = kq_conv(p, kq_post)
    if head_post is not None:
        p = mix(p, head_post)
    return zero_mask(p)


def differential_attention(q, k, v, lam, segment_ids=None):
    """q [B,T,2H',D] (heads 2h, 2h+1 pair), k [B,S,2K',D], v [B,S,K',2D] -> [B,T,H',2D]."""
    q, k, v = _f64(q, k, v)
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), (q.shape[2] // 2,))
    return per_document(_diff, q, k, v, segment_ids, lam)


def _diff(q, k, v, lam):
    p1 = softmax(logits(q[:, :, 0::2], k[:, :, 0::2]))
    p2 = softmax(logits(q[:, :, 1::2], k[:, :, 1::2]))
    out1, out2 = weight_values(p1, v), weight_values(p2, v)
    return out1 - lam[None, None, :, None] * out2

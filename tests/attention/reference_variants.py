"""Float64 numpy loops of the other baselines, written from their papers' equations (no jax):
forgetting attention, stick-breaking attention (products, not logs), Canon layers, the
output gate. Layouts as in tests/attention/reference.py; documents are cut out and run alone."""

import math

import numpy as np

from .reference import documents


def alone(fn, segment_ids, *per_position):
    """fn(*arrays) on each document of each row alone (arrays [B, T, ...], cut along T)."""
    arrays = [np.asarray(a, np.float64) for a in per_position]
    if segment_ids is None:
        return fn(*arrays)
    rows = []
    for b in range(arrays[0].shape[0]):
        runs = documents(list(np.asarray(segment_ids[b])))
        rows.append(np.concatenate([fn(*(a[b : b + 1, s:e] for a in arrays)) for s, e in runs], 1))
    return np.concatenate(rows, axis=0)


def _dot(q, k, b, i, h, j, kv):
    return sum(q[b, i, h, d] * k[b, j, kv, d] for d in range(q.shape[3])) / math.sqrt(q.shape[3])


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def forgetting_attention(q, k, v, gate_logits, segment_ids=None):
    """out_i = sum_j softmax_j(q_i.k_j/sqrt(D) + sum_{l=j+1}^{i} log sigmoid(g_l)) v_j."""
    return alone(_fox, segment_ids, q, k, v, gate_logits)


def _fox(q, k, v, g):
    num_b, num_t, num_h, _ = q.shape
    out = np.zeros((num_b, num_t, num_h, v.shape[3]))
    for b in range(num_b):
        for h in range(num_h):
            kv = h // (num_h // k.shape[2])
            for i in range(num_t):
                scores = []
                for j in range(i + 1):
                    decay = sum(math.log(_sigmoid(g[b, m, h])) for m in range(j + 1, i + 1))
                    scores.append(_dot(q, k, b, i, h, j, kv) + decay)
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                for j, w in enumerate(weights):
                    out[b, i, h] += w / total * v[b, j, kv]
    return out


def stick_breaking_attention(q, k, v, segment_ids=None, attend_current=False):
    """A_ij = beta_ij prod_{j<m<i} (1 - beta_im) over j < i, the rest of the stick on v_i; or
    with attend_current A_ij = beta_ij prod_{j<m<=i} (1 - beta_im) over j <= i."""
    return alone(lambda *a: _stick_breaking(*a, attend_current), segment_ids, q, k, v)


def _stick_breaking(q, k, v, attend_current):
    num_b, num_t, num_h, _ = q.shape
    out = np.zeros((num_b, num_t, num_h, v.shape[3]))
    for b in range(num_b):
        for h in range(num_h):
            kv = h // (num_h // k.shape[2])
            for i in range(num_t):
                last = i if attend_current else i - 1  # the nearest key that breaks the stick
                beta = {j: _sigmoid(_dot(q, k, b, i, h, j, kv)) for j in range(last + 1)}
                used = 0.0
                for j in range(last + 1):
                    weight = beta[j] * math.prod(1 - beta[m] for m in range(j + 1, last + 1))
                    out[b, i, h] += weight * v[b, j, kv]
                    used += weight
                if not attend_current:
                    out[b, i, h] += (1 - used) * v[b, i, kv]
    return out


def canon(x, kernel, segment_ids=None, residual=True):
    """y_t = [x_t +] sum_a w[a] x_{t-K+1+a} (positions before the document read 0)."""
    return alone(lambda x: _canon(x, np.asarray(kernel, np.float64), residual), segment_ids, x)


def _canon(x, w, residual):
    taps = w.shape[0]
    out = np.array(x) if residual else np.zeros(x.shape)
    for t in range(x.shape[1]):
        for a in range(taps):
            if t - taps + 1 + a >= 0:
                out[:, t] += w[a] * x[:, t - taps + 1 + a]
    return out


def output_gate(out, x, w):
    """out[b,t,h,:] * sigmoid(x[b,t] @ w[:, h, :]) (w [E,H,D]) or sigmoid(x[b,t] @ w[:, h])."""
    out, x, w = (np.asarray(a, np.float64) for a in (out, x, w))
    gated = np.zeros(out.shape)
    for b, t, h in np.ndindex(*out.shape[:3]):
        logits = sum(x[b, t, e] * w[e, h] for e in range(x.shape[2]))
        gated[b, t, h] = out[b, t, h] * np.vectorize(_sigmoid)(logits)
    return gated

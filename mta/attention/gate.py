"""Gated attention (Qiu et al., "Gated Attention for Large Language Models", arXiv 2505.06708):
a sigmoid gate on each head's output, computed from the layer's input x (after its norm),
applied after the attention and before the output projection (the paper's position G1):

    elementwise: out[b, t, h, :] *= sigmoid(x[b, t] @ W[:, h, :])      W [E, H, D]
    headwise:    out[b, t, h, :] *= sigmoid(x[b, t] @ W[:, h])         W [E, H]

FoX's "Pro" output gate is the elementwise form. Per token: nothing crosses positions.
"""

import jax
import jax.numpy as jnp


def sigmoid_gate(out_BTHD, gate_logits) -> jax.Array:
    """out [B, T, H, D] times sigmoid(gate_logits) ([B, T, H, D] elementwise or [B, T, H] per
    head), in float32 -> out's dtype."""
    gate = jax.nn.sigmoid(gate_logits.astype(jnp.float32))
    if gate.ndim == out_BTHD.ndim - 1:
        gate = gate[..., None]
    return (out_BTHD.astype(jnp.float32) * gate).astype(out_BTHD.dtype)

"""Decoder-only transformer in the style of the MTA paper's models (Flax NNX).

Pre-norm blocks with RMSNorm, RoPE, SwiGLU, no biases, optionally tied embeddings. The network
is built from resolved settings (mta/settings.py; mta/resolve.py makes them from a config). An
attention layer projects to heads and calls the pure functions of `mta.attention`; it owns the
MTA kernels (key-query convolutions, head mixing) and the group norm on the head outputs.

Every parameter carries `logical_axes` metadata (one name or None per dimension), which the
training code maps to mesh axes, and `weight_decay` metadata (whether AdamW decays it).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mta.attention import (
    attention_weights,
    canon_conv,
    canon_step,
    canon_window,
    diff_head_norm,
    diff_lambda,
    diff_lambda_init,
    differential_attention,
    multi_token_attention,
    tuned_vjp,
)
from mta.attention import decode as cached
from mta.layers import RMSNorm, apply_rope, param, project, rms_norm  # noqa: F401 (re-exported)
from mta.parallel import constrain_batch
from mta.projected import _normal, _Projected
from mta.settings import AttentionSettings, ModelSettings
from mta.variants import FoxAttention, StickBreakingAttention


def kq_kernel_init(shape: tuple[int, ...], kind: str, value: float, rngs: nnx.Rngs) -> jax.Array:
    """Key-query kernel [H, c_q, c_k]: identity (current query, centre key = 1), constant, zero,
    or uniform in [-value, value]."""
    if kind == "identity":
        _, c_q, c_k = shape
        return jnp.zeros(shape, jnp.float32).at[:, c_q - 1, (c_k - 1) // 2].set(1.0)
    if kind == "constant":
        return jnp.full(shape, value, jnp.float32)
    if kind == "zero":
        return jnp.zeros(shape, jnp.float32)
    return jax.random.uniform(rngs.params(), shape, jnp.float32, -value, value)


def grouped_identity(num_heads: int, group: int) -> jax.Array:
    """Identity head mixing in the grouped layout [H / c_h, c_h (in), c_h (out)]."""
    return jnp.tile(jnp.eye(group, dtype=jnp.float32), (num_heads // group, 1, 1))


class Attention(_Projected):
    """Softmax attention with the optional MTA parts: key-query convolutions, head mixing and
    group norm (the baseline when all are off)."""

    def __init__(self, m: ModelSettings, s: AttentionSettings, rngs: nnx.Rngs):
        H, D, c_h = s.num_heads, s.head_dim, s.head_group
        self._projections(m, s, rngs, H, s.num_kv_heads, D)
        decay = s.decay_mta_params

        def kq_kernel(taps):
            init = kq_kernel_init((H, *taps), s.kernel_init, s.kernel_init_value, rngs)
            return param(init, ("heads", None, None), decay)

        if s.kq_pre is not None and s.head_pre != "conv3d":
            self.kq_pre = kq_kernel(s.kq_pre)
        if s.kq_post is not None:
            self.kq_post = kq_kernel(s.kq_post)
        if s.head_pre == "linear":
            self.head_pre = param(jnp.eye(H, dtype=jnp.float32), (None, None), decay)
        elif s.head_pre == "grouped":
            self.head_pre = param(grouped_identity(H, c_h), ("heads", None, None), decay)
        elif s.head_pre == "conv3d":
            c_q, c_k = s.kq_pre
            kernel = jnp.zeros((H // c_h, c_h, c_h, c_q, c_k), jnp.float32)
            kernel = kernel.at[:, :, :, c_q - 1, (c_k - 1) // 2].set(grouped_identity(H, c_h))
            self.head_pre = param(kernel, ("heads", None, None, None, None), decay)
        if s.head_post == "grouped":
            self.head_post = param(grouped_identity(H, c_h), ("heads", None, None), decay)
        if s.group_norm != "none":
            self.out_norm = param(jnp.ones((D,), jnp.float32), ("norm",), decay)
        if s.group_norm == "gating":
            self.gate_w = param(_normal(rngs, (D,), m.init_std), ("norm",), decay)
            self.gate_b = param(jnp.zeros((), jnp.float32), (), decay)

    def _core_params(self) -> dict:
        """The MTA kernels this layer has, by name."""
        names = ("kq_pre", "head_pre", "kq_post", "head_post")
        return {name: getattr(self, name)[...] for name in names if hasattr(self, name)}

    def _attend(self, q, k, v, segment_ids=None, **kernels):
        return multi_token_attention(
            q, k, v, **kernels, segment_ids=segment_ids, impl=self.settings.impl, tuned=self.tuned
        )

    def _prefill(self, q, k, v, lengths_B, max_len):
        kernels = self._core_params()
        return cached.prefill(q, k, v, lengths_B, max_len, **kernels, impl=self.settings.impl)

    def _step(self, q, k, v, cache):
        return cached.attend_step(q, k, v, cache, **self._core_params())

    def weights(self, x_BTE, positions_BT, segment_ids_BT=None):
        """The attention map of this layer: x [B, T, E] -> [B, H, T, T] float32."""
        q, k, _ = self._qkv(x_BTE, positions_BT)
        return attention_weights(q, k, **self._core_params(), segment_ids=segment_ids_BT)

    def _norm(self, out_BTHD: jax.Array) -> jax.Array:
        """Per-head RMSNorm over D, then scalar sigmoid gating or depth scaling (docs/mta.md)."""
        group_norm = self.settings.group_norm
        if group_norm == "none":
            return out_BTHD
        normed = rms_norm(out_BTHD.astype(jnp.float32), self.out_norm[...], self.eps)
        if group_norm == "gating":
            gate_BTH1 = jax.nn.sigmoid(normed @ self.gate_w[...] + self.gate_b[...])[..., None]
            return (normed * gate_BTH1).astype(out_BTHD.dtype)
        depth_scale = 1.0 - diff_lambda_init(self.settings.layer)
        return (normed * depth_scale).astype(out_BTHD.dtype)


class DiffAttention(_Projected):
    """DIFF Transformer attention (Ye et al. 2024): H' heads, each the difference of two softmax
    maps over half-heads of width D, values of width 2D, a learned lambda re-parameterised as
    exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init(layer), and per-head RMSNorm scaled by
    (1 - lambda_init). H' = num_heads, D = head_dim (default dim // (2 H'))."""

    def __init__(self, m: ModelSettings, s: AttentionSettings, rngs: nnx.Rngs):
        D = s.head_dim
        self._projections(m, s, rngs, 2 * s.num_heads, 2 * s.num_kv_heads, 2 * D)
        self.lambda_init = diff_lambda_init(s.layer)
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            setattr(self, name, param(_normal(rngs, (D,), 0.1), ("norm",)))
        self.head_norm = param(jnp.ones((2 * D,), jnp.float32), ("norm",))

    def _core_params(self) -> dict:
        lambdas = (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2)
        return {"lam": diff_lambda(*(p[...] for p in lambdas), self.lambda_init)}

    def _attend(self, q, k, v, segment_ids=None, lam=None):
        return differential_attention(q, k, v, lam, segment_ids, tuned_vjp(self.tuned))

    def _prefill(self, q, k, v, lengths_B, max_len):
        return cached.diff_prefill(q, k, v, self._core_params()["lam"], lengths_B, max_len)

    def _step(self, q, k, v, cache):
        return cached.diff_attend_step(q, k, v, cache, self._core_params()["lam"])

    def _norm(self, out_BTHD):
        """Per-head norm scaled by (1 - lambda_init)."""
        return diff_head_norm(out_BTHD, self.head_norm[...], self.lambda_init, self.eps)


ATTENTION = {
    "softmax": Attention,
    "diff": DiffAttention,
    "fox": FoxAttention,
    "stick_breaking": StickBreakingAttention,
}


class MLP(nnx.Module):
    """SwiGLU: down(silu(x @ gate) * (x @ up))."""

    def __init__(self, m: ModelSettings, rngs: nnx.Rngs):
        std = m.init_std
        out_std = std / math.sqrt(2 * m.num_layers) if m.scale_output_init else std
        self.gate = param(_normal(rngs, (m.dim, m.mlp_hidden), std), ("embed", "mlp"))
        self.up = param(_normal(rngs, (m.dim, m.mlp_hidden), std), ("embed", "mlp"))
        self.down = param(_normal(rngs, (m.mlp_hidden, m.dim), out_std), ("mlp", "embed"))
        self.dtype, self.tuned = jnp.dtype(m.compute_dtype), m.tuned

    def __call__(self, x_BTE: jax.Array) -> jax.Array:
        x = x_BTE.astype(self.dtype)
        tuned = tuned_vjp(self.tuned)
        gate, up, down = (w[...].astype(self.dtype) for w in (self.gate, self.up, self.down))
        hidden = jax.nn.silu(project(x, gate, 1, tuned)) * project(x, up, 1, tuned)
        return project(hidden, down, 1, tuned)


class Block(nnx.Module):
    """Pre-norm block: x + attention(norm(x)), then x + MLP(norm(x)); Canon layers (A before
    attention, C before the MLP) convolve the normed states where model.canon asks for them."""

    def __init__(self, m: ModelSettings, s: AttentionSettings, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(m.dim, m.norm_eps)
        self.attn = ATTENTION[s.kind](m, s, rngs)
        self.mlp_norm = RMSNorm(m.dim, m.norm_eps)
        self.mlp = MLP(m, rngs)
        self.remat = m.remat
        self.canon_places = tuple(p for p in "AC" if p in m.canon)
        self.canon_residual = m.canon_residual
        bound = 1.0 / math.sqrt(m.canon_kernel)  # PyTorch Conv1d's default init (fan-in K)
        for place in self.canon_places:
            kernel = jax.random.uniform(rngs.params(), (m.canon_kernel, m.dim), minval=-bound,
                                        maxval=bound)  # fmt: skip
            setattr(self, f"canon_{place}", param(kernel, (None, "embed")))

    def _canon(self, place, h_BTE, segment_ids_BT):
        if place not in self.canon_places:
            return h_BTE
        kernel = getattr(self, f"canon_{place}")[...]
        return canon_conv(h_BTE, kernel, segment_ids_BT, self.canon_residual)

    def __call__(self, x_BTE, positions_BT, segment_ids_BT=None):
        attention = type(self.attn).__call__
        if self.remat == "attention":  # keep only the attention's inputs for the backward pass
            attention = nnx.remat(attention)
        h_BTE = self._canon("A", self.attn_norm(x_BTE), segment_ids_BT)
        x_BTE = x_BTE + attention(self.attn, h_BTE, positions_BT, segment_ids_BT)
        return x_BTE + self.mlp(self._canon("C", self.mlp_norm(x_BTE), segment_ids_BT))

    # ---- Cached decoding: the same block, with the attention layer's cache threaded through ----
    # (the Canon windows ride in the attention layer's cache, LayerCache.windows, A then C)

    def prefill(self, x_BTE, lengths_B, max_len: int):
        """x [B, T, E] right-padded prompts -> ([B, T, E], LayerCache)."""
        windows = []

        def canon(place, h_BTE):
            if place in self.canon_places:
                windows.append(canon_window(h_BTE, lengths_B, self._taps() - 1))
            return self._canon(place, h_BTE, None)

        attn_BTE, cache = self.attn.prefill(canon("A", self.attn_norm(x_BTE)), lengths_B, max_len)
        x_BTE = x_BTE + attn_BTE
        x_BTE = x_BTE + self.mlp(canon("C", self.mlp_norm(x_BTE)))
        return x_BTE, cache._replace(windows=tuple(windows))

    def decode(self, x_B1E, cache):
        """x [B, 1, E], one token per row -> ([B, 1, E], CacheUpdate)."""
        windows, old = [], iter(cache.windows)

        def canon(place, h_B1E):
            if place not in self.canon_places:
                return h_B1E
            kernel = getattr(self, f"canon_{place}")[...]
            h_B1E, window = canon_step(h_B1E, next(old), kernel, self.canon_residual)
            windows.append(window)
            return h_B1E

        attn_B1E, update = self.attn.decode(canon("A", self.attn_norm(x_B1E)), cache)
        x_B1E = x_B1E + attn_B1E
        x_B1E = x_B1E + self.mlp(canon("C", self.mlp_norm(x_B1E)))
        return x_B1E, update._replace(windows=tuple(windows))

    def _taps(self) -> int:
        return getattr(self, f"canon_{self.canon_places[0]}").shape[0]


class Transformer(nnx.Module):
    """tokens [B, T] int -> logits [B, T, V] float32, built from ModelSettings."""

    def __init__(self, settings: ModelSettings, rngs: nnx.Rngs):
        m = self.settings = settings
        self.embed = param(_normal(rngs, (m.vocab_size, m.dim), m.init_std), ("vocab", "embed"))
        self.blocks = nnx.List([Block(m, s, rngs) for s in m.layers])
        self.final_norm = RMSNorm(m.dim, m.norm_eps)
        if not m.tie_embeddings:
            self.unembed = param(
                _normal(rngs, (m.dim, m.vocab_size), m.init_std), ("embed", "vocab")
            )

    def _embed(self, tokens_BT):
        return self.embed[...].astype(self.settings.compute_dtype)[tokens_BT]

    def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None) -> jax.Array:
        return self.from_embeddings(self._embed(tokens_BT), positions_BT, segment_ids_BT)

    def from_embeddings(self, x_BTE, positions_BT=None, segment_ids_BT=None) -> jax.Array:
        """The network after the embedding lookup: [B, T, E] -> logits [B, T, V] float32.
        Positions default to 0..T-1 (with segment_ids, give each document's own positions)."""
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(x_BTE.shape[1]), x_BTE.shape[:2])
        block_fn = nnx.remat(Block.__call__) if self.settings.remat == "block" else Block.__call__
        x_BTE = constrain_batch(x_BTE)
        for block in self.blocks:
            x_BTE = constrain_batch(block_fn(block, x_BTE, positions_BT, segment_ids_BT))
        return self._logits(x_BTE)

    def attention_maps(self, tokens_BT, positions_BT=None, segment_ids_BT=None) -> list:
        """Each layer's attention map for inspection: tokens [B, T] -> L arrays [B, H, T, T]
        float32 (softmax attention only; the DIFF baseline has two maps per head)."""
        if any(s.kind != "softmax" for s in self.settings.layers) or self.settings.canon != "none":
            raise ValueError("attention maps need attention.kind=softmax and no Canon layers")
        x_BTE = self._embed(tokens_BT)
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(x_BTE.shape[1]), x_BTE.shape[:2])
        maps = []
        for block in self.blocks:
            maps.append(block.attn.weights(block.attn_norm(x_BTE), positions_BT, segment_ids_BT))
            x_BTE = block(x_BTE, positions_BT, segment_ids_BT)
        return maps

    # ---- Cached decoding (driven by mta/eval/generate.py) -------------------------------------

    def prefill(self, tokens_BT, lengths_B, max_len: int):
        """Prompt pass filling one cache per layer. tokens [B, T] right-padded: row b's prompt
        is tokens[b, :lengths[b]] at positions 0..lengths[b]-1 (later entries are ignored).
        -> (logits [B, T, V] float32, tuple of LayerCache with max_len positions)."""
        x_BTE = self._embed(tokens_BT)
        caches = []
        for block in self.blocks:
            x_BTE, cache = block.prefill(x_BTE, lengths_B, max_len)
            caches.append(cache)
        return self._logits(x_BTE), tuple(caches)

    def decode(self, tokens_B1, caches):
        """One token per row, at position caches[l].lengths (RoPE included):
        tokens [B, 1] -> (logits [B, 1, V] float32, one CacheUpdate per layer). The caches
        are only read; apply the updates with mta.attention.decode.commit (see its module)."""
        x_B1E = self._embed(tokens_B1)
        updates = []
        for block, cache in zip(self.blocks, caches, strict=True):
            x_B1E, update = block.decode(x_B1E, cache)
            updates.append(update)
        return self._logits(x_B1E), tuple(updates)

    def _logits(self, x_BTE):
        """Final norm and unembedding: [B, T, E] -> [B, T, V] float32."""
        x_BTE = self.final_norm(x_BTE)
        unembed_EV = self.unembed[...] if hasattr(self, "unembed") else self.embed[...].T
        return jnp.einsum(
            "bte,ev->btv", x_BTE, unembed_EV.astype(x_BTE.dtype), preferred_element_type=jnp.float32
        )


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))

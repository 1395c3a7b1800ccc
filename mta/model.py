"""Decoder-only transformer in the style of the MTA paper's models (Flax NNX).

Pre-norm blocks with RMSNorm, RoPE, SwiGLU, no biases, optionally tied embeddings. The attention
block projects to heads and calls the pure functions of `mta.attention`; it owns the MTA kernels
(key-query convolutions, head mixing) and the group norm on the head outputs.

Every parameter carries `logical_axes` metadata (one name or None per dimension); the training
code maps those names to mesh axes with the rules of the config.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mta.attention import (
    attention_weights,
    diff_head_norm,
    diff_lambda,
    diff_lambda_init,
    differential_attention,
    multi_token_attention,
)
from mta.attention import decode as cached
from mta.config import ModelConfig, kq_layer_indices
from mta.parallel import TENSOR, constrain_batch, head_split, mesh_axis_size, over_heads

MTA_PARAM_NAMES = ("kq_pre", "kq_post", "head_pre", "head_post", "out_norm", "gate_w", "gate_b")
DIFF_PARAM_NAMES = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2", "head_norm")


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float) -> jax.Array:
    return std * jax.random.normal(rngs.params(), shape, jnp.float32)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis in float32: [..., D] -> [..., D] in x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * weight).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(x: jax.Array, w: jax.Array, num_in: int = 1) -> jax.Array:
    """A projection: x [*batch, *w.shape[:num_in]] contracted with w -> [*batch,
    *w.shape[num_in:]] (e.g. [B, T, E] x [E, H, D] -> [B, T, H, D] with num_in=1).

    Its VJP is written out only for speed: from autodiff's gradient XLA:CPU wrote cotangents
    transposed before the weight-gradient products (the SwiGLU gate's alone took 9% of the small
    LM's training step); the weight gradient as one contraction over the batch axes has no
    such copy.
    """
    return jnp.tensordot(x, w, axes=num_in)


def _project_fwd(x, w, num_in):
    return project(x, w, num_in), (x, w)


def _project_bwd(num_in, residuals, g):
    x, w = residuals
    num_batch = x.ndim - num_in
    dx = jnp.tensordot(g, w, axes=(tuple(range(num_batch, g.ndim)), tuple(range(num_in, w.ndim))))
    dw = jnp.tensordot(x, g, axes=(tuple(range(num_batch)),) * 2)
    return dx, dw


project.defvjp(_project_fwd, _project_bwd)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.weight[...], self.eps)


def apply_rope(x_BTHD: jax.Array, positions_BT: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding (Llama's rotate-half layout) on [B, T, H, D], D even."""
    half = x_BTHD.shape[-1] // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles_BTF = positions_BT[..., None].astype(jnp.float32) * inv_freq
    cos, sin = jnp.cos(angles_BTF), jnp.sin(angles_BTF)
    # [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin] as x * [cos, cos] + [x2, x1] * [-sin, sin]:
    # swapping the halves is a reversal of a [2, D/2] view, which fuses (no concatenation of x)
    cos_BT1D = jnp.concatenate([cos, cos], axis=-1)[:, :, None]
    sin_BT1D = jnp.concatenate([-sin, sin], axis=-1)[:, :, None]
    x = x_BTHD.astype(jnp.float32)
    swapped = jnp.flip(x.reshape(*x.shape[:-1], 2, half), axis=-2).reshape(x.shape)
    return (x * cos_BT1D + swapped * sin_BT1D).astype(x_BTHD.dtype)


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


def head_mixing(head_pre: str, head_post: str, group: int) -> tuple:
    """The head mixings of a layer for tensor parallelism: "linear" or the group size of each."""
    pre = {"none": (), "linear": ("linear",)}.get(head_pre, (group,))
    return pre + ((group,) if head_post == "grouped" else ())


class Attention(nnx.Module):
    """Projections, RoPE, (multi-token) attention, group norm on the heads, output projection."""

    def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
        a = cfg.attention
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads or cfg.num_heads
        self.head_dim = cfg.head_dim or cfg.dim // cfg.num_heads
        self.rope_theta, self.eps, self.impl = cfg.rope_theta, cfg.norm_eps, a.impl
        self.group_norm = a.group_norm
        self.depth_scale = 1.0 - (0.8 - 0.6 * math.exp(-0.3 * layer))
        self.dtype = jnp.dtype(cfg.compute_dtype)
        H, K, D, std = self.num_heads, self.num_kv_heads, self.head_dim, cfg.init_std
        out_std = std / math.sqrt(2 * cfg.num_layers) if cfg.scale_output_init else std
        self.wq = nnx.Param(
            _normal(rngs, (cfg.dim, H, D), std), logical_axes=("embed", "heads", None)
        )
        self.wk = nnx.Param(
            _normal(rngs, (cfg.dim, K, D), std), logical_axes=("embed", "kv_heads", None)
        )
        self.wv = nnx.Param(
            _normal(rngs, (cfg.dim, K, D), std), logical_axes=("embed", "kv_heads", None)
        )
        self.wo = nnx.Param(
            _normal(rngs, (H, D, cfg.dim), out_std), logical_axes=("heads", None, "embed")
        )

        has_kq = layer in kq_layer_indices(a.kq_layers, cfg.num_layers)
        group = a.head_group_size or H
        if has_kq and a.kq_pre.enabled and a.head_pre != "conv3d":
            shape = (H, a.kq_pre.c_q, a.kq_pre.c_k)
            self.kq_pre = nnx.Param(
                kq_kernel_init(shape, a.kernel_init, a.kernel_init_value, rngs),
                logical_axes=("heads", None, None),
                weight_decay=a.decay_mta_params,
            )
        if has_kq and a.kq_post.enabled:
            shape = (H, a.kq_post.c_q, a.kq_post.c_k)
            self.kq_post = nnx.Param(
                kq_kernel_init(shape, a.kernel_init, a.kernel_init_value, rngs),
                logical_axes=("heads", None, None),
                weight_decay=a.decay_mta_params,
            )
        if a.head_pre == "linear":
            self.head_pre = nnx.Param(
                jnp.eye(H, dtype=jnp.float32),
                logical_axes=(None, None),
                weight_decay=a.decay_mta_params,
            )
        elif a.head_pre == "grouped" or (a.head_pre == "conv3d" and not has_kq):
            self.head_pre = nnx.Param(
                grouped_identity(H, group),
                logical_axes=("heads", None, None),
                weight_decay=a.decay_mta_params,
            )
        elif a.head_pre == "conv3d":
            c_q, c_k = a.kq_pre.c_q, a.kq_pre.c_k
            kernel = jnp.zeros((H // group, group, group, c_q, c_k), jnp.float32)
            kernel = kernel.at[:, :, :, c_q - 1, (c_k - 1) // 2].set(grouped_identity(H, group))
            self.head_pre = nnx.Param(
                kernel,
                logical_axes=("heads", None, None, None, None),
                weight_decay=a.decay_mta_params,
            )
        if a.head_post == "grouped":
            self.head_post = nnx.Param(
                grouped_identity(H, group),
                logical_axes=("heads", None, None),
                weight_decay=a.decay_mta_params,
            )
        self.head_mixing = head_mixing(a.head_pre, a.head_post, group)
        if a.group_norm != "none":
            self.out_norm = nnx.Param(
                jnp.ones((D,), jnp.float32), logical_axes=("norm",), weight_decay=a.decay_mta_params
            )
        if a.group_norm == "gating":
            self.gate_w = nnx.Param(
                _normal(rngs, (D,), std), logical_axes=("norm",), weight_decay=a.decay_mta_params
            )
            self.gate_b = nnx.Param(
                jnp.zeros((), jnp.float32), logical_axes=(), weight_decay=a.decay_mta_params
            )

    def _kernel(self, name: str) -> jax.Array | None:
        param = getattr(self, name, None)  # absent when this layer does not use it
        return None if param is None else param[...]

    def __call__(self, x_BTE, positions_BT, segment_ids_BT=None):
        q_BTHD, k_BTKD, v_BTKD = self._qkv(x_BTE, positions_BT)
        H, K = self.num_heads, self.num_kv_heads
        split = head_split(H, K, mesh_axis_size(TENSOR), self.head_mixing)
        kernels = {name: w for name, w in self._kernels().items() if w is not None}
        attend = functools.partial(multi_token_attention, impl=self.impl)
        out_BTHD = over_heads(
            attend, q_BTHD, k_BTKD, v_BTKD, kernels, segment_ids_BT, split, split_kv=K > 1
        )
        return self._output(out_BTHD)

    def weights(self, x_BTE, positions_BT, segment_ids_BT=None):
        """The attention map of this layer (dense path): x [B, T, E] -> [B, H, T, T] float32."""
        q_BTHD, k_BTKD, _ = self._qkv(x_BTE, positions_BT)
        return attention_weights(q_BTHD, k_BTKD, **self._kernels(), segment_ids=segment_ids_BT)

    def _qkv(self, x_BTE, positions_BT):
        """Projections and RoPE: x [B, T, E] -> q [B, T, H, D], k, v [B, T, K, D]."""
        x = x_BTE.astype(self.dtype)
        q_BTHD = project(x, self.wq[...].astype(self.dtype))
        k_BTKD = project(x, self.wk[...].astype(self.dtype))
        v_BTKD = project(x, self.wv[...].astype(self.dtype))
        q_BTHD = apply_rope(q_BTHD, positions_BT, self.rope_theta)
        k_BTKD = apply_rope(k_BTKD, positions_BT, self.rope_theta)
        return q_BTHD, k_BTKD, v_BTKD

    def _kernels(self) -> dict:
        """The MTA kernels this layer has (None for the absent ones)."""
        names = ("kq_pre", "head_pre", "kq_post", "head_post")
        return {name: self._kernel(name) for name in names}

    def _output(self, out_BTHD):
        """Group norm on the heads and the output projection: [B, T, H, D] -> [B, T, E]."""
        out_BTHD = self._group_norm(out_BTHD)
        return project(out_BTHD, self.wo[...].astype(self.dtype), 2)

    def _group_norm(self, out_BTHD: jax.Array) -> jax.Array:
        """Per-head RMSNorm over D, then scalar sigmoid gating or depth scaling (docs/mta.md section 3)."""
        if self.group_norm == "none":
            return out_BTHD
        normed = rms_norm(out_BTHD.astype(jnp.float32), self.out_norm[...], self.eps)
        if self.group_norm == "gating":
            gate_BTH1 = jax.nn.sigmoid(normed @ self.gate_w[...] + self.gate_b[...])[..., None]
            return (normed * gate_BTH1).astype(out_BTHD.dtype)
        return (normed * self.depth_scale).astype(out_BTHD.dtype)

    # ---- Cached decoding (mta/attention/decode.py; driven by mta/eval/generate.py) ----------

    def prefill(self, x_BTE, lengths_B, max_len: int):
        """Prompt pass: x [B, T, E] right-padded (row b's tokens at 0..lengths[b]-1)
        -> ([B, T, E], LayerCache of max_len positions)."""
        positions_BT = jnp.broadcast_to(jnp.arange(x_BTE.shape[1]), x_BTE.shape[:2])
        q_BTHD, k_BTKD, v_BTKD = self._qkv(x_BTE, positions_BT)
        out_BTHD, cache = cached.prefill(
            q_BTHD, k_BTKD, v_BTKD, lengths_B, max_len, **self._kernels()
        )
        return self._output(out_BTHD), cache

    def decode(self, x_B1E, cache):
        """One token per row at position cache.lengths, reading the cache:
        x [B, 1, E] -> ([B, 1, E], CacheUpdate for cached.commit)."""
        q_B1HD, k_B1KD, v_B1KD = self._qkv(x_B1E, cache.lengths[:, None])
        out_B1HD, update = cached.attend_step(q_B1HD, k_B1KD, v_B1KD, cache, **self._kernels())
        return self._output(out_B1HD), update


def _differential(q, k, v, segment_ids, lam):
    return differential_attention(q, k, v, lam, segment_ids)


class DiffAttention(nnx.Module):
    """DIFF Transformer attention (Ye et al. 2024): H' heads, each the difference of two softmax
    maps over half-heads of width D, values of width 2D, a learned lambda re-parameterised as
    exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init(layer), and per-head RMSNorm scaled by
    (1 - lambda_init). H' = num_heads, D = head_dim (default dim // (2 H'))."""

    def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
        H = cfg.num_heads
        K = cfg.num_kv_heads or H
        D = cfg.head_dim or cfg.dim // (2 * H)
        self.rope_theta, self.eps = cfg.rope_theta, cfg.norm_eps
        self.lambda_init = diff_lambda_init(layer)
        self.dtype = jnp.dtype(cfg.compute_dtype)
        std = cfg.init_std
        out_std = std / math.sqrt(2 * cfg.num_layers) if cfg.scale_output_init else std
        self.wq = nnx.Param(
            _normal(rngs, (cfg.dim, 2 * H, D), std), logical_axes=("embed", "heads", None)
        )
        self.wk = nnx.Param(
            _normal(rngs, (cfg.dim, 2 * K, D), std), logical_axes=("embed", "kv_heads", None)
        )
        self.wv = nnx.Param(
            _normal(rngs, (cfg.dim, K, 2 * D), std), logical_axes=("embed", "kv_heads", None)
        )
        self.wo = nnx.Param(
            _normal(rngs, (H, 2 * D, cfg.dim), out_std), logical_axes=("heads", None, "embed")
        )
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            setattr(self, name, nnx.Param(_normal(rngs, (D,), 0.1), logical_axes=("norm",)))
        self.head_norm = nnx.Param(jnp.ones((2 * D,), jnp.float32), logical_axes=("norm",))

    def __call__(self, x_BTE, positions_BT, segment_ids_BT=None):
        q, k, v = self._qkv(x_BTE, positions_BT)
        H, K = q.shape[2] // 2, v.shape[2]
        split = head_split(H, K, mesh_axis_size(TENSOR))
        out_BTHD = over_heads(
            _differential, q, k, v, {"lam": self._lambda()}, segment_ids_BT, split, K > 1
        )
        return self._output(out_BTHD)

    def _qkv(self, x_BTE, positions_BT):
        """Projections and RoPE: q [B, T, 2H, D], k [B, T, 2K, D], v [B, T, K, 2D]."""
        x = x_BTE.astype(self.dtype)
        q = project(x, self.wq[...].astype(self.dtype))
        k = project(x, self.wk[...].astype(self.dtype))
        v = project(x, self.wv[...].astype(self.dtype))
        q = apply_rope(q, positions_BT, self.rope_theta)
        return q, apply_rope(k, positions_BT, self.rope_theta), v

    def _lambda(self):
        lambdas = (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2)
        return diff_lambda(*(p[...] for p in lambdas), self.lambda_init)

    def _output(self, out_BTHD):
        """Per-head norm scaled by (1 - lambda_init), output projection: -> [B, T, E]."""
        out_BTHD = diff_head_norm(out_BTHD, self.head_norm[...], self.lambda_init, self.eps)
        return project(out_BTHD, self.wo[...].astype(self.dtype), 2)

    # ---- Cached decoding (mta/attention/decode.py; driven by mta/eval/generate.py) ----------

    def prefill(self, x_BTE, lengths_B, max_len: int):
        """Prompt pass: x [B, T, E] right-padded -> ([B, T, E], LayerCache of max_len)."""
        positions_BT = jnp.broadcast_to(jnp.arange(x_BTE.shape[1]), x_BTE.shape[:2])
        q, k, v = self._qkv(x_BTE, positions_BT)
        out_BTHD, cache = cached.diff_prefill(q, k, v, self._lambda(), lengths_B, max_len)
        return self._output(out_BTHD), cache

    def decode(self, x_B1E, cache):
        """One token per row at position cache.lengths, reading the cache:
        x [B, 1, E] -> ([B, 1, E], CacheUpdate for cached.commit)."""
        q, k, v = self._qkv(x_B1E, cache.lengths[:, None])
        out_B1HD, update = cached.diff_attend_step(q, k, v, cache, self._lambda())
        return self._output(out_B1HD), update


class MLP(nnx.Module):
    """SwiGLU: down(silu(x @ gate) * (x @ up))."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        std = cfg.init_std
        out_std = std / math.sqrt(2 * cfg.num_layers) if cfg.scale_output_init else std
        self.gate = nnx.Param(
            _normal(rngs, (cfg.dim, cfg.mlp_hidden), std), logical_axes=("embed", "mlp")
        )
        self.up = nnx.Param(
            _normal(rngs, (cfg.dim, cfg.mlp_hidden), std), logical_axes=("embed", "mlp")
        )
        self.down = nnx.Param(
            _normal(rngs, (cfg.mlp_hidden, cfg.dim), out_std), logical_axes=("mlp", "embed")
        )
        self.dtype = jnp.dtype(cfg.compute_dtype)

    def __call__(self, x_BTE: jax.Array) -> jax.Array:
        x = x_BTE.astype(self.dtype)
        gate, up, down = (w[...].astype(self.dtype) for w in (self.gate, self.up, self.down))
        return project(jax.nn.silu(project(x, gate)) * project(x, up), down)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        attention = DiffAttention if cfg.attention.kind == "diff" else Attention
        self.attn = attention(cfg, layer, rngs)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg, rngs)
        self.remat = cfg.remat

    def __call__(self, x_BTE, positions_BT, segment_ids_BT=None):
        attention = type(self.attn).__call__
        if self.remat == "attention":  # keep only the attention's inputs for the backward pass
            attention = nnx.remat(attention)
        x_BTE = x_BTE + attention(self.attn, self.attn_norm(x_BTE), positions_BT, segment_ids_BT)
        return x_BTE + self.mlp(self.mlp_norm(x_BTE))

    # ---- Cached decoding: the same block, with the attention layer's cache threaded through ----

    def prefill(self, x_BTE, lengths_B, max_len: int):
        """x [B, T, E] right-padded prompts -> ([B, T, E], LayerCache)."""
        attn_BTE, cache = self.attn.prefill(self.attn_norm(x_BTE), lengths_B, max_len)
        x_BTE = x_BTE + attn_BTE
        return x_BTE + self.mlp(self.mlp_norm(x_BTE)), cache

    def decode(self, x_B1E, cache):
        """x [B, 1, E], one token per row -> ([B, 1, E], CacheUpdate)."""
        attn_B1E, update = self.attn.decode(self.attn_norm(x_B1E), cache)
        x_B1E = x_B1E + attn_B1E
        return x_B1E + self.mlp(self.mlp_norm(x_B1E)), update


class Transformer(nnx.Module):
    """tokens [B, T] int -> logits [B, T, V] float32."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Param(
            _normal(rngs, (cfg.vocab_size, cfg.dim), cfg.init_std), logical_axes=("vocab", "embed")
        )
        self.blocks = nnx.List([Block(cfg, i, rngs) for i in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.unembed = nnx.Param(
                _normal(rngs, (cfg.dim, cfg.vocab_size), cfg.init_std),
                logical_axes=("embed", "vocab"),
            )

    def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None) -> jax.Array:
        x_BTE = self.embed[...].astype(self.cfg.compute_dtype)[tokens_BT]
        return self.from_embeddings(x_BTE, positions_BT, segment_ids_BT)

    def from_embeddings(self, x_BTE, positions_BT=None, segment_ids_BT=None) -> jax.Array:
        """The network after the embedding lookup: [B, T, E] -> logits [B, T, V] float32.
        Positions default to 0..T-1 (with segment_ids, give each document's own positions)."""
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(x_BTE.shape[1]), x_BTE.shape[:2])
        block_fn = nnx.remat(Block.__call__) if self.cfg.remat == "block" else Block.__call__
        x_BTE = constrain_batch(x_BTE)
        for block in self.blocks:
            x_BTE = constrain_batch(block_fn(block, x_BTE, positions_BT, segment_ids_BT))
        return self._logits(x_BTE)

    def attention_maps(self, tokens_BT, positions_BT=None, segment_ids_BT=None) -> list:
        """Each layer's attention map for inspection: tokens [B, T] -> L arrays [B, H, T, T]
        float32 (softmax attention only; the DIFF baseline has two maps per head)."""
        if self.cfg.attention.kind != "softmax":
            raise ValueError(
                f"attention maps need attention.kind=softmax, not {self.cfg.attention.kind}"
            )
        x_BTE = self.embed[...].astype(self.cfg.compute_dtype)[tokens_BT]
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
        x_BTE = self.embed[...].astype(self.cfg.compute_dtype)[tokens_BT]
        caches = []
        for block in self.blocks:
            x_BTE, cache = block.prefill(x_BTE, lengths_B, max_len)
            caches.append(cache)
        return self._logits(x_BTE), tuple(caches)

    def decode(self, tokens_B1, caches):
        """One token per row, at position caches[l].lengths (RoPE included):
        tokens [B, 1] -> (logits [B, 1, V] float32, one CacheUpdate per layer). The caches
        are only read; apply the updates with mta.attention.decode.commit (see its module)."""
        x_B1E = self.embed[...].astype(self.cfg.compute_dtype)[tokens_B1]
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

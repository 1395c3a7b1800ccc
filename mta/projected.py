"""What every attention layer of the model shares (`_Projected`): q/k/v/o projections, RoPE
(or none), QK-norm, the output gate of gated attention, the tensor-parallel call of the core,
and cached decoding. mta/model.py and mta/variants.py subclass it."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mta.attention import sigmoid_gate, tuned_vjp
from mta.layers import apply_rope, param, project, rms_norm
from mta.parallel import over_heads
from mta.settings import AttentionSettings, ModelSettings


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float) -> jax.Array:
    return std * jax.random.normal(rngs.params(), shape, jnp.float32)


class _Projected(nnx.Module):
    """What every attention layer shares: q/k/v/o projections, RoPE (or none), QK-norm, the
    output gate, the tensor-parallel call of the core and cached decoding. Subclasses define the
    core (_attend, _prefill, _step), what happens to the head outputs before the gate and the
    output projection (_norm), and per-token inputs of the core computed from x
    (_token_params, heads first so that over_heads splits them with the heads)."""

    def _projections(self, m: ModelSettings, s: AttentionSettings, rngs, q_heads, kv_heads, v_dim):
        """wq [E, q_heads, D], wk [E, kv_heads, D], wv [E, K, v_dim], wo [H, v_dim, E]."""
        std = m.init_std
        out_std = std / math.sqrt(2 * m.num_layers) if m.scale_output_init else std
        self.wq = param(_normal(rngs, (m.dim, q_heads, s.head_dim), std), ("embed", "heads", None))
        self.wk = param(
            _normal(rngs, (m.dim, kv_heads, s.head_dim), std), ("embed", "kv_heads", None)
        )
        self.wv = param(
            _normal(rngs, (m.dim, s.num_kv_heads, v_dim), std), ("embed", "kv_heads", None)
        )
        self.wo = param(
            _normal(rngs, (s.num_heads, v_dim, m.dim), out_std), ("heads", None, "embed")
        )
        if s.qk_norm:  # one [D] RMSNorm weight per head
            self.q_norm = param(jnp.ones((q_heads, s.head_dim)), ("heads", None))
            self.k_norm = param(jnp.ones((kv_heads, s.head_dim)), ("kv_heads", None))
        if s.output_gate != "none":
            shape = (m.dim, s.num_heads) + ((v_dim,) if s.output_gate == "elementwise" else ())
            axes = ("embed", "heads") + ((None,) if s.output_gate == "elementwise" else ())
            self.gate_out = param(_normal(rngs, shape, std), axes)
        self.settings, self.rope_theta, self.eps = s, m.rope_theta, m.norm_eps
        self.rope_scaling = m.rope_scaling
        self.dtype, self.tuned = jnp.dtype(m.compute_dtype), m.tuned

    def __call__(self, x_BTE, positions_BT, segment_ids_BT=None):
        """x [B, T, E] -> [B, T, E]."""
        q, k, v = self._qkv(x_BTE, positions_BT)
        out_BTHD = over_heads(
            self._attend,
            q,
            k,
            v,
            self._core_params() | self._token_params(x_BTE),
            segment_ids_BT,
            self.settings.split_heads,
            split_kv=self.settings.num_kv_heads > 1,
        )
        return self._output(out_BTHD, x_BTE)

    def _token_params(self, x_BTE) -> dict:
        return {}

    def _qkv(self, x_BTE, positions_BT):
        """Projections, then QK-norm and RoPE on q and k where enabled."""
        x = x_BTE.astype(self.dtype)
        q, k, v = (self._project(x, w) for w in (self.wq, self.wk, self.wv))
        if self.settings.qk_norm:
            q, k = rms_norm(q, self.q_norm[...], self.eps), rms_norm(k, self.k_norm[...], self.eps)
        if self.settings.rope:
            q, k = (apply_rope(x, positions_BT, self.rope_theta, self.rope_scaling) for x in (q, k))
        return q, k, v

    def _project(self, x, w, num_in: int = 1):
        return project(x, w[...].astype(self.dtype), num_in, tuned_vjp(self.tuned))

    def _output(self, out_BTHD, x_BTE=None):
        """The head norm, the output gate (read from the layer input x, which it then needs)
        and the output projection: [B, T, H, Dv] -> [B, T, E]."""
        out_BTHD = self._norm(out_BTHD)
        if hasattr(self, "gate_out"):
            gate_logits = self._project(x_BTE.astype(self.dtype), self.gate_out)
            out_BTHD = sigmoid_gate(out_BTHD, gate_logits)
        return self._project(out_BTHD, self.wo, 2)

    def _norm(self, out_BTHD):
        return out_BTHD

    # ---- Cached decoding (mta/attention/decode.py; driven by mta/eval/generate.py) ----------

    def prefill(self, x_BTE, lengths_B, max_len: int):
        """Prompt pass: x [B, T, E] right-padded (row b's tokens at 0..lengths[b]-1)
        -> ([B, T, E], LayerCache of max_len positions)."""
        positions_BT = jnp.broadcast_to(jnp.arange(x_BTE.shape[1]), x_BTE.shape[:2])
        q, k, v = self._qkv(x_BTE, positions_BT)
        out_BTHD, cache = self._prefill(q, k, v, lengths_B, max_len, **self._token_params(x_BTE))
        return self._output(out_BTHD, x_BTE), cache

    def decode(self, x_B1E, cache):
        """One token per row at position cache.lengths, reading the cache:
        x [B, 1, E] -> ([B, 1, E], CacheUpdate for cached.commit)."""
        q, k, v = self._qkv(x_B1E, cache.lengths[:, None])
        out_B1HD, update = self._step(q, k, v, cache, **self._token_params(x_B1E))
        return self._output(out_B1HD, x_B1E), update

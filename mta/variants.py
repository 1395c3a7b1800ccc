"""The other attention baselines as layers of the model: forgetting attention (FoX) and
stick-breaking attention, each a `_Projected` subclass over its pure functions in
mta/attention/ (chosen by model.attention.kind in mta/model.py's Block)."""

import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from mta.attention import (
    forgetting_attention,
    fox,
    log_forget_gate,
    stick_breaking,
    stick_breaking_attention,
)
from mta.layers import param
from mta.projected import _normal, _Projected
from mta.settings import AttentionSettings, ModelSettings


class FoxAttention(_Projected):
    """Forgetting attention (FoX, Lin et al. 2025): softmax attention whose logits carry the
    cumulative log of a per-head, per-token forget gate f_t = sigmoid(x_t @ fgate_w + fgate_b)
    (mta/attention/fox.py). No RoPE by default; "Pro": qk_norm and an elementwise output_gate."""

    def __init__(self, m: ModelSettings, s: AttentionSettings, rngs: nnx.Rngs):
        self._projections(m, s, rngs, s.num_heads, s.num_kv_heads, s.head_dim)
        self.fgate_w = param(_normal(rngs, (m.dim, s.num_heads), m.init_std), ("embed", "heads"))
        self.fgate_b = param(jnp.zeros((s.num_heads,), jnp.float32), ("heads",))

    def _core_params(self) -> dict:
        return {}

    def _token_params(self, x_BTE) -> dict:
        """{"log_f": [H, B, T]}: heads first, so over_heads splits it with the heads."""
        logits_BTH = self._project(x_BTE.astype(self.dtype), self.fgate_w) + self.fgate_b[...]
        return {"log_f": rearrange(log_forget_gate(logits_BTH), "b t h -> h b t")}

    def _attend(self, q, k, v, segment_ids=None, log_f=None):
        log_f_BTH = rearrange(log_f, "h b t -> b t h")
        return forgetting_attention(q, k, v, log_f_BTH, segment_ids, impl=self.settings.impl)

    def _prefill(self, q, k, v, lengths_B, max_len, log_f=None):
        log_f_BTH = rearrange(log_f, "h b t -> b t h")
        return fox.fox_prefill(q, k, v, log_f_BTH, lengths_B, max_len, self.settings.impl)

    def _step(self, q, k, v, cache, log_f=None):
        return fox.fox_attend_step(q, k, v, rearrange(log_f, "h b t -> b t h"), cache)


class StickBreakingAttention(_Projected):
    """Stick-breaking attention (Tan et al. 2024): weights from breaking a stick over the
    preceding keys, nearest first, instead of a softmax (mta/attention/stick_breaking.py).
    No RoPE by default."""

    def __init__(self, m: ModelSettings, s: AttentionSettings, rngs: nnx.Rngs):
        self._projections(m, s, rngs, s.num_heads, s.num_kv_heads, s.head_dim)

    def _core_params(self) -> dict:
        return {}

    def _attend(self, q, k, v, segment_ids=None):
        s = self.settings
        return stick_breaking_attention(q, k, v, segment_ids, s.attend_current, s.impl)

    def _prefill(self, q, k, v, lengths_B, max_len):
        s = self.settings
        return stick_breaking.sb_prefill(q, k, v, lengths_B, max_len, s.attend_current, s.impl)

    def _step(self, q, k, v, cache):
        return stick_breaking.sb_attend_step(q, k, v, cache, self.settings.attend_current)

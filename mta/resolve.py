"""The run config's model section resolved into the settings the model is built from."""

import dataclasses

from mta.config import ConfigError, ModelConfig, kq_layer_indices
from mta.parallel import head_split
from mta.settings import AttentionSettings, ModelSettings

TUNED = {"auto": None, "enabled": True, "disabled": False}


def resolve_model(cfg: ModelConfig, tensor: int = 1) -> ModelSettings:
    """ModelSettings for `cfg` on a mesh whose tensor axis has `tensor` devices.

    Raises ConfigError (one line naming the setting) for a layout that cannot be exact, e.g.
    head groups that do not stay whole on a tensor shard."""
    layers = tuple(_attention(cfg, layer, tensor) for layer in range(cfg.num_layers))
    return ModelSettings(
        vocab_size=cfg.vocab_size,
        dim=cfg.dim,
        mlp_hidden=cfg.mlp_hidden,
        tie_embeddings=cfg.tie_embeddings,
        rope_theta=cfg.rope_theta,
        norm_eps=cfg.norm_eps,
        init_std=cfg.init_std,
        scale_output_init=cfg.scale_output_init,
        compute_dtype=cfg.compute_dtype,
        remat=cfg.remat,
        tuned=TUNED[cfg.tuned_vjp],
        layers=layers,
        canon=cfg.canon,
        canon_kernel=cfg.canon_kernel,
        canon_residual=cfg.canon_residual,
        rope_scaling=_rope_scaling(cfg),
    )


def _rope_scaling(cfg: ModelConfig) -> tuple | None:
    r = cfg.rope_scaling
    if r.kind == "linear":
        return ("linear", r.factor)
    if r.kind == "llama3":
        return ("llama3", r.factor, r.low_freq_factor, r.high_freq_factor, r.original_max_position)
    return None


def _attention(cfg: ModelConfig, layer: int, tensor: int) -> AttentionSettings:
    """One layer's settings: the kind's own, then the switches every kind has."""
    a = cfg.attention
    rope = a.rope == "on" or (a.rope == "auto" and a.kind not in ("fox", "stick_breaking"))
    common = dict(
        rope=rope, qk_norm=a.qk_norm, output_gate=a.output_gate, attend_current=a.attend_current
    )
    return dataclasses.replace(_kind(cfg, layer, tensor), **common)


def _kind(cfg: ModelConfig, layer: int, tensor: int) -> AttentionSettings:
    a = cfg.attention
    heads, kv_heads = cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
    if a.kind in ("fox", "stick_breaking"):  # per-head cores: nothing mixes heads
        return AttentionSettings(
            layer, a.kind, heads, kv_heads, cfg.head_dim or cfg.dim // heads, impl=a.impl,
            split_heads=_split(heads, kv_heads, tensor, ()),
        )  # fmt: skip
    if a.kind == "diff":
        head_dim = cfg.head_dim or cfg.dim // (2 * heads)
        return AttentionSettings(
            layer, "diff", heads, kv_heads, head_dim, impl=a.impl,
            split_heads=_split(heads, kv_heads, tensor, ()),
        )  # fmt: skip
    has_kq = layer in kq_layer_indices(a.kq_layers, cfg.num_layers)
    group = a.head_group_size or heads
    kq_pre = (a.kq_pre.c_q, a.kq_pre.c_k) if has_kq and a.kq_pre.enabled else None
    head_pre = a.head_pre
    if head_pre == "conv3d" and kq_pre is None:  # a layer without kq conv: grouped mixing only
        head_pre = "grouped"
    mixing = {"none": (), "linear": ("linear",)}.get(head_pre, (group,))
    mixing += (group,) if a.head_post == "grouped" else ()
    return AttentionSettings(
        layer=layer,
        kind="softmax",
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=cfg.head_dim or cfg.dim // heads,
        kq_pre=kq_pre,
        kq_post=(a.kq_post.c_q, a.kq_post.c_k) if has_kq and a.kq_post.enabled else None,
        head_pre=head_pre,
        head_post=a.head_post,
        head_group=group,
        group_norm=a.group_norm,
        kernel_init=a.kernel_init,
        kernel_init_value=a.kernel_init_value,
        decay_mta_params=a.decay_mta_params,
        impl=a.impl,
        split_heads=_split(heads, kv_heads, tensor, mixing),
    )


def _split(heads: int, kv_heads: int, tensor: int, mixing: tuple) -> bool:
    try:
        return head_split(heads, kv_heads, tensor, mixing)
    except ValueError as err:
        raise ConfigError(f"mesh.tensor: {err}") from None

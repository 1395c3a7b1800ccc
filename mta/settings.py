"""What the model is built from: its sizes and each layer's attention, resolved once.

mta/resolve.py makes a ModelSettings from the run config (checking it, working out which
layers get which kernels and how heads split over the tensor axis); mta/model.py builds the
network from it and makes no decision of its own. Both dataclasses are frozen: a model's
settings do not change after it is built.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionSettings:
    """One layer's attention, resolved."""

    layer: int  # 0-based index (DIFF's and depth scaling's lambda_init depend on it)
    kind: str  # softmax (baseline, talking heads, MTA) | diff | fox | stick_breaking
    num_heads: int  # H (DIFF: output heads H')
    num_kv_heads: int  # K
    head_dim: int  # D (DIFF: the half-head width)
    kq_pre: tuple[int, int] | None = None  # (c_q, c_k) of this layer's pre-softmax conv
    kq_post: tuple[int, int] | None = None  # (c_q, c_k) of its post-softmax conv
    head_pre: str = "none"  # none | linear | grouped | conv3d (3-D kernel, taps of kq_pre)
    head_post: str = "none"  # none | grouped
    head_group: int = 1  # c_h of grouped mixing
    group_norm: str = "none"  # none | gating | depth_scaling
    kernel_init: str = "identity"  # identity | constant | zero | uniform (kq kernels)
    kernel_init_value: float = 0.3
    decay_mta_params: bool = True  # weight decay on this layer's MTA parameters
    impl: str = "auto"  # mta.attention.IMPLS
    split_heads: bool = False  # heads split over the mesh's tensor axis (else all on each shard)
    rope: bool = True  # RoPE on q and k
    qk_norm: bool = False  # per-head RMSNorm of q and k
    output_gate: str = "none"  # none | elementwise | headwise (gated attention)
    attend_current: bool = False  # stick_breaking's form (mta/attention/stick_breaking.py)


@dataclass(frozen=True)
class ModelSettings:
    """The whole decoder, resolved."""

    vocab_size: int
    dim: int
    mlp_hidden: int
    tie_embeddings: bool
    rope_theta: float
    norm_eps: float
    init_std: float
    scale_output_init: bool
    compute_dtype: str
    remat: str  # none | block | attention
    tuned: bool | None  # hand-written derivatives (None: by backend, mta.attention.tuned_vjp)
    layers: tuple[AttentionSettings, ...]
    canon: str = "none"  # Canon layers: none | A (before attention) | C (before the MLP) | AC
    canon_kernel: int = 4  # taps of each Canon conv
    canon_residual: bool = True
    # RoPE frequency scaling: None, ("linear", factor) or ("llama3", factor, low_freq_factor,
    # high_freq_factor, original_max_position) (mta/layers.py rope_inv_freq)
    rope_scaling: tuple | None = None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

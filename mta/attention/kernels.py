"""The geometry of a set of MTA kernels, validated once and shared by every implementation.

    spec = KernelSpec.of(num_heads, kq_pre, head_pre, kq_post, head_post)

A KernelSpec is frozen and hashable (a static argument under jit). It holds what the kernels'
shapes imply: the query and key taps of the pre- and post-softmax convolutions and the form of
each head mixing. Kernel layouts (docs/mta.md):

    kq_pre, kq_post   [H, c_q, c_k]                 depthwise key-query conv, c_k odd
    head_pre          [H, H]                        linear logit mixing
                      [H // c_h, c_h, c_h]          grouped mixing, [group, in, out]
                      [H // c_h, c_h, c_h, c_q, c_k] the full 3-D pre-softmax conv (replaces kq_pre)
    head_post         [H // c_h, c_h, c_h] or [H, H]
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.scipy.linalg import block_diag

HEAD_FORMS = ("none", "linear", "grouped", "conv3d")


@dataclass(frozen=True)
class KernelSpec:
    """Static shape facts of one attention layer's kernels (build with KernelSpec.of)."""

    num_heads: int
    pre_taps: tuple[int, int] = (1, 1)  # (c_q, c_k) of kq_pre or of a 3-D head_pre; (1, 1) none
    post_taps: tuple[int, int] = (1, 1)  # (c_q', c_k') of kq_post; (1, 1) none
    kq_pre: bool = False
    kq_post: bool = False
    head_pre: str = "none"  # one of HEAD_FORMS
    head_post: str = "none"  # none | linear | grouped

    @classmethod
    def of(cls, num_heads: int, kq_pre=None, head_pre=None, kq_post=None, head_post=None):
        """Validates the kernels' shapes against H = num_heads (ValueError naming the first
        kernel that does not fit and the shapes allowed) -> KernelSpec."""
        pre_taps, post_taps = (1, 1), (1, 1)
        if kq_pre is not None:
            pre_taps = kq_taps(kq_pre, num_heads, "kq_pre")
        head_pre_form = head_form(head_pre, num_heads, "head_pre", allow_3d=True)
        if head_pre_form == "conv3d":
            if kq_pre is not None:
                raise ValueError(
                    "a 5-D head_pre is the full 3-D pre-softmax conv and replaces kq_pre: "
                    "pass kq_pre=None (or factorise into kq_pre + a grouped head_pre)"
                )
            pre_taps = tuple(jnp.shape(head_pre)[3:])
        if kq_post is not None:
            post_taps = kq_taps(kq_post, num_heads, "kq_post")
        head_post_form = head_form(head_post, num_heads, "head_post", allow_3d=False)
        return cls(
            num_heads,
            pre_taps,
            post_taps,
            kq_pre is not None,
            kq_post is not None,
            head_pre_form,
            head_post_form,
        )

    @property
    def plain(self) -> bool:
        """No kernel at all: standard causal attention."""
        return not (self.kq_pre or self.kq_post) and self.head_pre == self.head_post == "none"

    @property
    def pre_conv(self) -> bool:
        """A convolution before the softmax (kq_pre or the 3-D head_pre)."""
        return self.kq_pre or self.head_pre == "conv3d"

    @property
    def post(self) -> bool:
        """Anything after the softmax (then rows are masked to 0 again and not renormalised)."""
        return self.kq_post or self.head_post != "none"

    @property
    def pre_r(self) -> int:
        """Key taps each side of the pre conv's centre."""
        return (self.pre_taps[1] - 1) // 2

    @property
    def post_r(self) -> int:
        """Key taps each side of the post conv's centre."""
        return (self.post_taps[1] - 1) // 2


def kq_taps(kernel_HQK, num_heads: int, name: str) -> tuple[int, int]:
    """(c_q, c_k) of a key-query kernel [H, c_q, c_k]; ValueError naming `name` unless it has
    that shape with c_k odd."""
    shape = tuple(jnp.shape(kernel_HQK))
    if len(shape) != 3 or shape[0] != num_heads or min(shape) < 1:
        raise ValueError(f"{name} must have shape [H={num_heads}, c_q, c_k], got {shape}")
    if shape[2] % 2 == 0:
        raise ValueError(f"{name}: c_k (key kernel size) must be odd, got c_k={shape[2]}")
    return shape[1], shape[2]


def head_form(weights, num_heads: int, name: str, allow_3d: bool) -> str:
    """ "none" (None), "linear" ([H, H]), "grouped" ([H // c_h, c_h, c_h]) or, with allow_3d,
    "conv3d" ([H // c_h, c_h, c_h, c_q, c_k], c_k odd); ValueError naming `name` otherwise."""
    if weights is None:
        return "none"
    shape = tuple(jnp.shape(weights))
    if shape == (num_heads, num_heads):
        return "linear"
    ranks = (3, 5) if allow_3d else (3,)
    if (
        len(shape) in ranks
        and min(shape) >= 1
        and shape[1] == shape[2]
        and shape[0] * shape[1] == num_heads
    ):
        if len(shape) == 3:
            return "grouped"
        if shape[4] % 2 == 0:
            raise ValueError(f"{name}: c_k (key kernel size) must be odd, got c_k={shape[4]}")
        return "conv3d"
    allowed = f"[H, H] = [{num_heads}, {num_heads}] (linear) or [H // c_h, c_h, c_h] (grouped)"
    if allow_3d:
        allowed += " or [H // c_h, c_h, c_h, c_q, c_k] (3-D)"
    raise ValueError(f"{name} must have shape {allowed} with H={num_heads}, got {shape}")


def dense_mixing(weights) -> jax.Array:
    """Head mixing as out = W @ in: [H, H] stays, grouped [N, c_h, c_h] ([group, in, out])
    becomes block-diagonal with W[n c_h + o, n c_h + i] = weights[n, i, o]."""
    if weights.ndim == 2:
        return weights
    return block_diag(*[weights[n].T for n in range(weights.shape[0])])

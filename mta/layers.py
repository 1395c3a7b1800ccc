"""The model's building blocks that are not attention: RMSNorm, RoPE and the projection that
every weight product goes through."""

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx


def param(value: jax.Array, axes: tuple, decay: bool = True) -> nnx.Param:
    """A parameter with its logical axes and whether weight decay applies to it."""
    return nnx.Param(value, logical_axes=axes, weight_decay=decay)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis in float32: [..., D] -> [..., D] in x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * weight).astype(x.dtype)


def project(x: jax.Array, w: jax.Array, num_in: int = 1, tuned: bool = False) -> jax.Array:
    """A projection: x [*batch, *w.shape[:num_in]] contracted with w -> [*batch,
    *w.shape[num_in:]] (e.g. [B, T, E] x [E, H, D] -> [B, T, H, D] with num_in=1).

    tuned: a written-out VJP whose weight gradient is one contraction over the batch axes
    (from autodiff's, XLA:CPU wrote the cotangents transposed before the weight products)."""
    if tuned:
        return _project_vjp(x, w, num_in)
    return jnp.tensordot(x, w, axes=num_in)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _project_vjp(x, w, num_in):
    return jnp.tensordot(x, w, axes=num_in)


def _project_fwd(x, w, num_in):
    return _project_vjp(x, w, num_in), (x, w)


def _project_bwd(num_in, residuals, g):
    x, w = residuals
    num_batch = x.ndim - num_in
    dx = jnp.tensordot(g, w, axes=(tuple(range(num_batch, g.ndim)), tuple(range(num_in, w.ndim))))
    dw = jnp.tensordot(x, g, axes=(tuple(range(num_batch)),) * 2)
    return dx, dw


_project_vjp.defvjp(_project_fwd, _project_bwd)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.weight = param(jnp.ones((dim,), jnp.float32), ("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.weight[...], self.eps)


def rope_inv_freq(half: int, theta: float, scaling: tuple | None = None) -> jax.Array:
    """RoPE's D/2 inverse frequencies theta^(-i / (D/2)) [D/2] float32, scaled as Hugging Face's
    rope types do it: ("linear", factor) divides all by factor; ("llama3", factor, low, high,
    original_max_position) divides those of wavelength > original / low by factor, keeps
    those < original / high, and blends linearly in 1 / wavelength between."""
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    if scaling is None:
        return inv_freq
    if scaling[0] == "linear":
        return inv_freq / scaling[1]
    _, factor, low, high, original = scaling
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return jnp.where(medium, blended, scaled)


def apply_rope(
    x_BTHD: jax.Array, positions_BT: jax.Array, theta: float, scaling: tuple | None = None
) -> jax.Array:
    """Rotary position embedding (Llama's rotate-half layout) on [B, T, H, D], D even, with the
    frequencies of rope_inv_freq(D / 2, theta, scaling)."""
    half = x_BTHD.shape[-1] // 2
    inv_freq = rope_inv_freq(half, theta, scaling)
    angles_BTF = positions_BT[..., None].astype(jnp.float32) * inv_freq
    cos, sin = jnp.cos(angles_BTF), jnp.sin(angles_BTF)
    # [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin] as x * [cos, cos] + [x2, x1] * [-sin, sin]:
    # swapping the halves is a reversal of a [2, D/2] view, which fuses (no concatenation of x)
    cos_BT1D = jnp.concatenate([cos, cos], axis=-1)[:, :, None]
    sin_BT1D = jnp.concatenate([-sin, sin], axis=-1)[:, :, None]
    x = x_BTHD.astype(jnp.float32)
    swapped = jnp.flip(x.reshape(*x.shape[:-1], 2, half), axis=-2).reshape(x.shape)
    return (x * cos_BT1D + swapped * sin_BT1D).astype(x_BTHD.dtype)

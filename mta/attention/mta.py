"""multi_token_attention: one entry point, several implementations of the same function.

    impl="reference"  reference.py: the paper's equations in order, plain jnp and autodiff
    impl="dense"      dense.py: the same maps, computed in the order measured fastest on XLA:CPU
    impl="blockwise"  blockwise.py: O(T) memory, forward and backward, tiles of 128 x 128
    impl="pallas"     pallas_mta.py: the same algorithm as Pallas kernels for GPU / TPU (interpret
                      mode on CPU); combinations it does not cover fall back to blockwise
    impl="auto"       dense on CPU, reference elsewhere, blockwise when one layer's dense maps
                      would take more than DENSE_MEMORY_FRACTION of the device's memory;
                      never pallas (ask for it by name)

Every implementation is tested equal to the reference (forward and gradients).
"""

import math
import os

import jax

from mta.attention.blockwise import multi_token_attention_blockwise
from mta.attention.core import tuned_vjp
from mta.attention.dense import multi_token_attention_dense
from mta.attention.kernels import KernelSpec
from mta.attention.pallas_mta import multi_token_attention_pallas
from mta.attention.reference import multi_token_attention_reference

IMPLS = ("reference", "dense", "blockwise", "pallas", "auto")
DENSE_MEMORY_FRACTION = 1 / 8
BATCH_AXES = ("data", "fsdp")


def multi_token_attention(
    q,
    k,
    v,
    kq_pre=None,
    head_pre=None,
    kq_post=None,
    head_post=None,
    segment_ids=None,
    impl="auto",
    tuned=None,
) -> jax.Array:
    """Multi-Token Attention: q [B,T,H,D], k/v [B,S,K,D] (K divides H) -> [B,T,H,D] (v's dtype).

    kq_pre:    [H, c_q, c_k] key-query conv on the zero-masked logits (c_k odd), or None.
    head_pre:  [H, H] linear or [H//c_h, c_h, c_h] grouped ([group, in, out]) logit mixing, or a
               5-D [H//c_h, c_h, c_h, c_q, c_k] 3-D conv kernel that replaces kq_pre + head_pre.
    kq_post:   [H, c_q, c_k] key-query conv on the attention weights, or None.
    head_post: [H//c_h, c_h, c_h] grouped (or [H, H] linear) weight mixing, or None.
    segment_ids: [B, T] document ids (needs S == T); attention and convolutions stay inside a
               document, so a packed row equals its documents run separately.
    impl:      one of IMPLS (module docstring).
    tuned:     the hand-written derivatives of dense and blockwise (None: core.tuned_vjp's
               default, on for CPU only).
    With every kernel None this is plain causal attention. Queries are the last T of S keys.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}; got {impl!r}")
    kernels = dict(kq_pre=kq_pre, head_pre=head_pre, kq_post=kq_post, head_post=head_post)
    if impl == "auto":
        impl = choose_impl(KernelSpec.of(q.shape[2], **kernels), q.shape, k.shape)
    if impl == "reference":
        return multi_token_attention_reference(q, k, v, **kernels, segment_ids=segment_ids)
    if impl == "dense":
        return multi_token_attention_dense(
            q, k, v, **kernels, segment_ids=segment_ids, tuned=tuned_vjp(tuned)
        )
    if impl == "pallas":
        return multi_token_attention_pallas(
            q, k, v, **kernels, segment_ids=segment_ids, tuned=tuned_vjp(tuned)
        )
    return multi_token_attention_blockwise(
        q, k, v, **kernels, segment_ids=segment_ids, tuned=tuned_vjp(tuned)
    )


def choose_impl(spec: KernelSpec, q_shape, k_shape, backend: str | None = None) -> str:
    """impl="auto"'s choice for q [B, T, H, D] and k [B, S, K, D]: "dense" on CPU, "reference"
    on other backends, "blockwise" when dense_map_bytes exceeds DENSE_MEMORY_FRACTION of
    device_memory_bytes. B is divided by the batch shards of the mesh in context."""
    backend = backend or jax.default_backend()
    batch = q_shape[0] // _batch_shards() or 1
    needed = dense_map_bytes(spec, batch, q_shape[2], q_shape[1], k_shape[1])
    if needed > DENSE_MEMORY_FRACTION * device_memory_bytes():
        return "blockwise"
    return "dense" if backend == "cpu" else "reference"


def dense_map_bytes(spec: KernelSpec, batch: int, heads: int, queries: int, keys: int) -> int:
    """float32 [B, H, T, S] maps one dense MTA layer keeps for its backward: logits and weights,
    2 * c_q per key-query convolution (the c_q row-shifted maps it sums and their gradients),
    one for linear/grouped pre mixing, two for post mixing. Counted from XLA:CPU's analysis of
    the compiled train step (mta/train/memory.py; docs/scaling.md)."""
    maps = 2 + 2 * spec.pre_taps[0] * spec.kq_pre + 2 * spec.post_taps[0] * spec.kq_post
    maps += (spec.head_pre != "none") + 2 * (spec.head_post != "none")
    return 4 * batch * heads * queries * keys * maps


def device_memory_bytes() -> int:
    """Memory of this process's first device: its allocator's limit where it reports one, else
    the host's physical memory. (Local: in a multi-process run jax.devices()[0] may belong to
    another process, whose stats this one cannot read.)"""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _batch_shards() -> int:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)

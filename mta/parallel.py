"""Model parallelism inside the model: attention heads split over the mesh's `tensor` axis with
`jax.shard_map`, and sharding constraints on activations.

Both read the mesh set by `jax.set_mesh` (the train loop sets it). Without a mesh, or with a
`tensor` axis of size 1, they do nothing, so the model runs unchanged on one device.

Head-parallel attention: tensor shard i holds query heads [i H/t, (i+1) H/t), their key/value
heads and their rows of every per-head kernel, and runs the attention core on them alone. That
is exact when nothing mixes heads across shards: the key-query convolutions are per head, and
grouped head mixing stays inside a shard when t divides the number of groups. Linear (all-heads)
pre-softmax mixing needs every head's logits, so its layers gather q, k, v over `tensor` and run
the core on all heads on every shard (the [B, T, H, D] inputs are cheap to gather; the [B, H, T, S]
logits would not be).
"""

import math
from collections.abc import Callable

import jax
from jax.sharding import PartitionSpec as P

TENSOR = "tensor"
BATCH = ("data", "fsdp")


def mesh_axis_size(name: str) -> int:
    """Size of axis `name` of the mesh in context (1 without a mesh or without that axis)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or name not in mesh.axis_names:
        return 1
    return mesh.shape[name]


def head_split(num_heads: int, num_kv_heads: int, tensor: int, mixing: tuple = ()) -> bool:
    """Whether attention heads split over `tensor` shards (False: the core runs on all heads on
    every shard). `mixing` lists each head mixing in use: "linear" or the group size c_h of a
    grouped one. For DIFF attention pass its H output heads and K key/value pairs.
    Raises ValueError, naming the setting and what would work, for layouts that cannot be exact.
    """
    if tensor == 1:
        return False
    if num_heads % tensor:
        raise ValueError(
            f"{num_heads} attention heads do not split over mesh.tensor={tensor}; use a "
            f"mesh.tensor that divides model.num_heads"
        )
    if num_kv_heads != 1 and num_kv_heads % tensor:
        raise ValueError(
            f"{num_kv_heads} key/value heads do not split over mesh.tensor={tensor}; use "
            f"model.num_kv_heads divisible by {tensor}, or 1 (MQA: the kv head is replicated)"
        )
    if "linear" in mixing:
        return False
    for group in mixing:
        num_groups = num_heads // group
        if num_groups % tensor:
            raise ValueError(
                f"grouped head mixing of {group} heads makes {num_groups} group(s), which cannot "
                f"stay whole on mesh.tensor={tensor} shards; use model.attention.head_group_size "
                f"<= {num_heads // tensor} (dividing it) or a mesh.tensor dividing {num_groups}"
            )
    return True


def over_heads(
    attend: Callable, q, k, v, kernels: dict, segment_ids, split: bool, split_kv: bool
) -> jax.Array:
    """attend(q, k, v, segment_ids=..., **kernels) -> [B, T, H, Dv], run per `tensor` shard.

    q [B, T, H, D] and k/v [B, S, K, D] (any layout with whole heads contiguous along axis 2);
    every kernel with a leading axis is indexed by head (or head group) along it. split: heads
    split over `tensor` (head_split); split_kv: k and v too (else replicated, as for MQA).
    """
    if mesh_axis_size(TENSOR) == 1:
        return attend(q, k, v, segment_ids=segment_ids, **kernels)
    heads = TENSOR if split else None
    kv_heads = TENSOR if split and split_kv else None
    kernel_specs = {name: P(heads) if kernel.ndim else P() for name, kernel in kernels.items()}

    def core(q, k, v, kernels, segment_ids):
        return attend(q, k, v, segment_ids=segment_ids, **kernels)

    return jax.shard_map(
        core,
        in_specs=(
            P(None, None, heads),
            P(None, None, kv_heads),
            P(None, None, kv_heads),
            kernel_specs,
            None if segment_ids is None else P(),
        ),
        out_specs=P(None, None, heads),
        axis_names={TENSOR},
        check_vma=False,
    )(q, k, v, kernels, segment_ids)


def constrain_batch(x: jax.Array) -> jax.Array:
    """x [B, ...] kept split over the batch axes (data x fsdp) of the mesh in context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = tuple(a for a in BATCH if a in mesh.axis_names and mesh.shape[a] > 1)
    shards = math.prod(mesh.shape[a] for a in axes)
    if not axes or x.shape[0] % shards:  # e.g. a small eval batch: leave it to the compiler
        return x
    return jax.lax.with_sharding_constraint(x, P(axes))

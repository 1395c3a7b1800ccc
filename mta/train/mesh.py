"""The device mesh and the mapping from parameters' logical axis names to mesh shardings."""

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mta.config import ConfigError, MeshConfig
from mta.resolve import resolve_model

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Sizes of (data, fsdp, tensor) with a -1 filled in; raises ConfigError if they don't fit."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"mesh: fixed axes multiply to {known}, which does not divide the "
                f"{num_devices} devices"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ConfigError(
            f"mesh: data x fsdp x tensor = {'x'.join(map(str, sizes))} = {int(np.prod(sizes))} "
            f"but there are {num_devices} devices"
        )
    return tuple(sizes)


def make_mesh(cfg: MeshConfig) -> Mesh:
    """A mesh over all devices (all hosts) with axes data, fsdp, tensor."""
    # Auto axes: jit propagates shardings from the annotated inputs and outputs (GSPMD).
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(mesh_shape(cfg, jax.device_count()), MESH_AXES, axis_types=auto)


def logical_to_spec(axes: tuple, rules: dict) -> PartitionSpec:
    """Maps a tuple of logical axis names (or None) to a PartitionSpec through `rules`."""
    return PartitionSpec(*(rules.get(name) if name else None for name in axes))


def param_shardings(abstract_state: nnx.State, mesh: Mesh, rules: dict) -> dict:
    """NamedShardings for a model state (with `logical_axes` metadata), as a pure dict.

    A dimension whose size the mapped mesh axis does not divide (e.g. the byte vocabulary of
    259 over 2 tensor shards) stays replicated.
    """

    def sharding(variable):
        shape = variable.value.shape
        axes = getattr(variable, "logical_axes", None) or (None,) * len(shape)
        spec = logical_to_spec(axes, rules)
        spec = [
            axis if axis is None or size % mesh.shape[axis] == 0 else None
            for axis, size in zip(spec, shape, strict=True)
        ]
        return NamedSharding(mesh, PartitionSpec(*spec))

    specs = jax.tree.map(sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.State(specs).to_pure_dict()


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of [B, T] batch arrays: B split over data x fsdp."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
    """How many pieces the batch dimension is split into (data x fsdp)."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def vote_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a [num_devices] array split over every mesh axis: one element per device
    (each process sets the elements of its own devices; mta/train/stopping.py)."""
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))


def check_batch(cfg) -> None:
    """ConfigError unless the mesh fits the devices and the global batch splits evenly over the
    batch shards and the processes."""
    data, fsdp, _ = mesh_shape(cfg.mesh, jax.device_count())
    multiple = math.lcm(data * fsdp * cfg.train.grad_accum, jax.process_count())
    if cfg.train.batch_size % multiple:
        raise ConfigError(
            f"train.batch_size: {cfg.train.batch_size} does not divide evenly over "
            f"{cfg.train.grad_accum} micro-batch(es) (train.grad_accum) of {data * fsdp} batch "
            f"shards (mesh.data x mesh.fsdp) and {jax.process_count()} process(es); use a "
            f"multiple of {multiple}"
        )


def tensor_parallel_plan(cfg) -> str:
    """How attention uses the `tensor` axis, in words; ConfigError for a layout that cannot be
    exact (see mta/parallel.py and mta/resolve.py, which decides it per layer)."""
    tensor = mesh_shape(cfg.mesh, jax.device_count())[2]
    layers = resolve_model(cfg.model, tensor).layers
    if tensor == 1:
        return "one tensor shard: all heads on every device"
    if all(layer.split_heads for layer in layers):
        return f"heads split over {tensor} tensor shards (shard_map)"
    return f"all heads on each of {tensor} tensor shards (linear head_pre mixes all heads)"

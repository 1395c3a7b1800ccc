"""Memory per device of a training step: XLA's analysis of the compiled step, or a model of it.

`--dry-run` compiles the train step on abstract inputs (nothing is allocated) and reports
`compiled.memory_analysis()`: arguments (state and batch), outputs, the aliased (donated) part of
both, and temporaries (activations kept for the backward pass, gradients, workspaces); the peak is
arguments + outputs - aliased + temporaries. Sizes are per device: the compiled program is the
per-device program of the sharded step. Where the step cannot be compiled here (the mesh needs
more devices than this host has, or --no-compile) the model below stands in.

The model: state and gradients as sharded, plus per layer the micro-batch's activations
(residual stream, projections, MLP) and the float32 [B, H, T, S] maps the attention impl keeps
(mta/attention/mta.py: dense_map_bytes; none for blockwise, which keeps twice the activations
instead: padded inputs, [B, H, T] statistics, tiles), plus the logits; bfloat16 activations
count with their float32 upcasts. remat=block keeps only each block's input and one block's
activations, remat=attention one layer's maps. Measured on XLA:CPU (docs/scaling.md), the
model is within 25% of XLA's analysis without remat; XLA:CPU's analysis does not shrink with
remat, so there the model's remat saving is not what XLA reports.
"""

import jax
import numpy as np

from mta.attention.kernels import KernelSpec
from mta.attention.mta import dense_map_bytes
from mta.config import Config, kq_layer_indices
from mta.train.mesh import batch_sharding, mesh_shape
from mta.train.step import make_train_step

FIELDS = ("arguments", "outputs", "aliased", "temporaries")


def abstract_batch(cfg: Config, seq_len: int, mesh) -> dict:
    """ShapeDtypeStructs of one global training batch ([B, T] each) on the batch sharding."""
    shape, sharding = (cfg.train.batch_size, seq_len), batch_sharding(mesh)
    names = {"inputs": np.int32, "targets": np.int32, "weights": np.float32}
    if cfg.data.packing == "pack":
        names |= {"segment_ids": np.int32, "positions": np.int32}
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for k, dtype in names.items()}


def xla_memory(setup, seq_len: int) -> dict | None:
    """Bytes per device from XLA's analysis of the compiled train step of a TrainSetup
    (None where the backend gives no analysis): {source, arguments, outputs, aliased,
    temporaries, total}."""
    lowered = make_train_step(setup).lower(
        setup.abstract_state(), abstract_batch(setup.cfg, seq_len, setup.mesh)
    )
    analysis = lowered.compile().memory_analysis()
    if analysis is None:
        return None
    sizes = dict(
        zip(
            FIELDS,
            (
                analysis.argument_size_in_bytes,
                analysis.output_size_in_bytes,
                analysis.alias_size_in_bytes,
                analysis.temp_size_in_bytes,
            ),
            strict=True,
        )
    )
    total = sizes["arguments"] + sizes["outputs"] - sizes["aliased"] + sizes["temporaries"]
    return {"source": "xla", **{k: int(v) for k, v in sizes.items()}, "total": int(total)}


def modelled_memory(cfg: Config, abstract_state: dict, seq_len: int, num_devices: int) -> dict:
    """Bytes per device from the model above: {source, state_and_grads, activations, total}."""
    data, fsdp, tensor = mesh_shape(cfg.mesh, num_devices)
    leaves = jax.tree.leaves(abstract_state)
    state_bytes = sum(x.size * x.dtype.itemsize for x in leaves)
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state["params"]))
    sharded = (state_bytes + param_bytes) / (fsdp * tensor)

    m = cfg.model
    batch = cfg.train.batch_size / (data * fsdp * cfg.train.grad_accum)  # one micro-batch
    width = 6 if m.compute_dtype == "bfloat16" else 4  # bfloat16: and the float32 upcasts
    dense = batch * seq_len * (8 * m.dim + 3 * m.mlp_hidden) * width
    if m.attention.impl == "blockwise":
        dense *= 2  # its padded inputs, tile statistics and outputs
    maps = [_layer_map_bytes(cfg, layer, batch, seq_len, tensor) for layer in range(m.num_layers)]
    if m.remat == "block":
        layers = m.num_layers * batch * seq_len * m.dim * width + dense + max(maps)
    elif m.remat == "attention":
        layers = m.num_layers * dense + max(maps)
    else:
        layers = m.num_layers * dense + sum(maps)
    logits = batch * seq_len * m.vocab_size * 4 * 2  # float32 logits and their gradient
    activations = layers + logits
    return {
        "source": "model",
        "state_and_grads": int(sharded),
        "activations": int(activations),
        "total": int(sharded + activations),
    }


def _layer_map_bytes(cfg: Config, layer: int, batch: float, seq_len: int, tensor: int) -> float:
    """float32 [B, H, T, T] map bytes one layer keeps for the backward pass (0 for blockwise)."""
    a, heads = cfg.model.attention, cfg.model.num_heads
    if a.impl == "blockwise" or a.kind != "softmax":
        return 0.0
    convs = layer in kq_layer_indices(a.kq_layers, cfg.model.num_layers)
    spec = KernelSpec(
        heads,
        pre_taps=(a.kq_pre.c_q, a.kq_pre.c_k) if convs and a.kq_pre.enabled else (1, 1),
        post_taps=(a.kq_post.c_q, a.kq_post.c_k) if convs and a.kq_post.enabled else (1, 1),
        kq_pre=convs and a.kq_pre.enabled,
        kq_post=convs and a.kq_post.enabled,
        head_pre=a.head_pre if a.head_pre != "conv3d" else "none",
        head_post=a.head_post,
    )
    return dense_map_bytes(spec, 1, heads, seq_len, seq_len) * batch / tensor

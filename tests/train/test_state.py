"""The train state's shardings: the optimizer state follows the parameters it mirrors."""

import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from mta.config import load_config
from mta.train.mesh import MESH_AXES
from mta.train.state import TrainSetup

MTA_ALL = [
    "model.num_heads=4",
    "model.attention.kq_post.enabled=true",
    "model.attention.head_pre=grouped",
    "model.attention.head_post=grouped",
    "model.attention.head_group_size=2",
    "model.attention.group_norm=gating",
    "model.attention.decay_mta_params=false",
    "train.weight_decay=0.1",
]


@pytest.mark.parametrize(
    "variant",
    [MTA_ALL, ["model.attention.kind=diff", "model.attention.kq_pre.enabled=false"]],
    ids=["mta", "diff"],
)
def test_adam_moments_take_the_parameters_shardings(variant):
    cfg = load_config("configs/toy/block_mta_cpu.yaml", variant)
    setup = TrainSetup(cfg, AbstractMesh((1, 4, 2), MESH_AXES))  # fsdp=4 x tensor=2, no devices
    params_sh, opt_sh = setup.shardings["params"], setup.shardings["opt_state"]
    # the same tree as the optimizer state itself (the checkpoint's layout)
    opt_abstract = jax.eval_shape(setup.optimizer.init, setup.abstract_state()["params"])
    assert jax.tree.structure(opt_sh) == jax.tree.structure(opt_abstract)

    adam = opt_sh[1][0]  # chain(clip, adamw); adamw = chain(scale_by_adam, decay, lr)
    for moment in (adam.mu, adam.nu):
        assert moment == params_sh
    assert adam.count.spec == PartitionSpec()
    assert any(axis for s in jax.tree.leaves(params_sh) for axis in s.spec)  # some are split
    moments = {id(s) for s in jax.tree.leaves((adam.mu, adam.nu))}
    others = [s for s in jax.tree.leaves(opt_sh) if id(s) not in moments]
    assert others and all(s.spec == PartitionSpec() for s in others)

"""--dry-run's memory: XLA's analysis of the compiled train step, and the model that stands in
where the step is not compiled, within 25% of XLA's analysis (XLA:CPU here)."""

import functools

import jax
import pytest

from mta.cli.train import dry_run
from mta.config import load_config
from mta.train.memory import abstract_batch, modelled_memory
from mta.train.mesh import batch_sharding, make_mesh, replicated
from mta.train.state import TrainSetup
from mta.train.step import train_step

SMALL = [
    "model.dim=64", "model.num_layers=2", "model.num_heads=4", "model.mlp_hidden=192",
    "model.vocab_size=259", "train.batch_size=4", "data.task=text", "data.seq_len=256",
    "data.packing=pack",
]  # fmt: skip
MTA = [
    "model.attention.kq_pre.enabled=true", "model.attention.kq_post.enabled=true",
    "model.attention.head_pre=linear", "model.attention.head_post=grouped",
    "model.attention.group_norm=gating",
]  # fmt: skip
DENSE = [*MTA, "model.attention.impl=dense"]
CASES = {
    "baseline": [],
    "mta-dense": DENSE,
    "mta-dense-accum4": [*DENSE, "train.grad_accum=4"],
    "mta-blockwise-remat": [*MTA, "model.attention.impl=blockwise", "model.remat=block"],
}


def config(extra):
    return load_config("configs/lm/300M_baseline.yaml", [*SMALL, *extra])


@functools.cache
def xla_total(case: str) -> int:
    """XLA's peak for the train step of CASES[case], compiled here without the dry run's code."""
    cfg = config(CASES[case])
    setup = TrainSetup(cfg, make_mesh(cfg.mesh))
    step = jax.jit(
        functools.partial(train_step, setup.graphdef, setup.optimizer, setup.schedule, cfg.train),
        in_shardings=(setup.shardings, batch_sharding(setup.mesh)),
        out_shardings=(setup.shardings, replicated(setup.mesh)),
        donate_argnums=0,
    )
    batch = abstract_batch(cfg, cfg.data.seq_len, setup.mesh)
    m = step.lower(setup.abstract_state(), batch).compile().memory_analysis()
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + (m.temp_size_in_bytes)
    )


@pytest.mark.parametrize("case", ["baseline", "mta-dense", "mta-dense-accum4"])
def test_model_within_a_quarter_of_xla(case):
    """Without remat (XLA:CPU's analysis does not shrink with remat; the model's does)."""
    cfg = config(CASES[case])
    setup = TrainSetup(cfg, make_mesh(cfg.mesh))
    modelled = modelled_memory(cfg, setup.abstract_state(), cfg.data.seq_len, 1)["total"]
    assert abs(modelled / xla_total(case) - 1) <= 0.25, (modelled, xla_total(case))


@pytest.mark.parametrize("case", ["mta-dense", "mta-blockwise-remat"])
def test_dry_run_reports_xla_analysis(case):
    cfg = config(CASES[case])
    result = dry_run(cfg)
    memory = result["memory_per_device_bytes"]
    assert memory["source"] == "xla" and memory["total"] == xla_total(case)
    assert result["memory_per_device_gb"] == round(memory["total"] / 2**30, 3)
    assert dry_run(cfg, compile_step=False)["memory_per_device_bytes"]["source"] == "model"


def test_accumulation_and_blockwise_lower_xla_peak():
    dense = xla_total("mta-dense")
    assert xla_total("mta-dense-accum4") < dense / 2
    assert xla_total("mta-blockwise-remat") < dense / 2

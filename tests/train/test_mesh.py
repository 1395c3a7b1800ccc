"""Training on a device mesh (8 CPU devices in a subprocess) equals one device, and a checkpoint
written under one mesh restores under another."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mta.config import ConfigError, MeshConfig
from mta.train.mesh import mesh_shape
from mta.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
EIGHT_DEVICES = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def train(workdir, overrides, *extra, env=None):
    result = subprocess.run(
        [
            sys.executable,
            "scripts/train.py",
            "--config",
            "configs/toy/block_mta_cpu.yaml",
            "--workdir",
            str(workdir),
            *overrides,
            "eval.every=0",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return [r["loss"] for r in read_metrics(workdir)]


def test_mesh_shape_fills_and_checks():
    assert mesh_shape(MeshConfig(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
    assert mesh_shape(MeshConfig(data=1, fsdp=-1, tensor=1), 8) == (1, 8, 1)
    with pytest.raises(ConfigError, match="2x2x1 = 4 but there are 8 devices"):
        mesh_shape(MeshConfig(data=2, fsdp=2, tensor=1), 8)
    with pytest.raises(ConfigError, match="does not divide"):
        mesh_shape(MeshConfig(data=-1, fsdp=3, tensor=1), 8)


# A small MTA model with every component: key-query conv pre and post, GQA, grouped head mixing
# pre and post (2 groups, so tensor=2 keeps each group on one shard), group norm with gating.
MTA_ALL = [
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "model.attention.kq_pre.c_k=5",
    "model.attention.kq_post.enabled=true",
    "model.attention.kq_post.c_k=3",
    "model.attention.head_pre=grouped",
    "model.attention.head_post=grouped",
    "model.attention.head_group_size=2",
    "model.attention.group_norm=gating",
    "train.steps=5",
]
LAYOUTS = {
    "data8": ["mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1"],
    "fsdp8": ["mesh.data=1", "mesh.fsdp=8", "mesh.tensor=1"],
    "data2_fsdp2_tensor2": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
    "fsdp4_tensor2": ["mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2"],
}


def train_layouts(root, overrides, layouts: dict) -> dict:
    """Trains `overrides` on each mesh layout in one 8-device subprocess -> {layout: losses}."""
    config = "configs/toy/block_mta_cpu.yaml"
    result = subprocess.run(
        [
            sys.executable,
            "tests/train/layouts.py",
            str(root),
            config,
            json.dumps([*overrides, "eval.every=0"]),
            json.dumps(layouts),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=EIGHT_DEVICES,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_mesh_layouts_train_like_one_device(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, *MTA_ALL]
    one = train(tmp_path / "one", overrides)
    assert len(one) == 5
    # data=8 and fsdp=4 x tensor=2 train (with MTA kernels) in the resharding test below
    layouts = {name: LAYOUTS[name] for name in ("fsdp8", "data2_fsdp2_tensor2")}
    for layout, losses in train_layouts(tmp_path, overrides, layouts).items():
        np.testing.assert_allclose(losses, one, rtol=1e-5, err_msg=layout)


@pytest.mark.parametrize(
    "variant",
    [
        [*MTA_ALL, "model.attention.head_pre=linear"],  # mixes all heads: gathered over tensor
        [
            "model.attention.kind=diff",
            "model.num_heads=2",
            "model.attention.kq_pre.enabled=false",
            "train.steps=5",
        ],
    ],
    ids=["linear_head_pre", "diff"],
)
def test_tensor_parallel_variants_and_resharding_restore(tiny_overrides, tmp_path, variant):
    overrides = [*tiny_overrides, *variant]
    one = train(tmp_path / "one", overrides)
    # written on data=8 after 2 steps, continued on fsdp=4 x tensor=2: the tensor-parallel steps
    # are checked against one device, and so is the resharding restore
    layouts = {"data8>fsdp4_tensor2": [LAYOUTS["data8"], LAYOUTS["fsdp4_tensor2"]]}
    for layout, losses in train_layouts(tmp_path, overrides, layouts).items():
        np.testing.assert_allclose(losses, one, rtol=1e-5, err_msg=layout)

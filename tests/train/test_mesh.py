"""Training on a device mesh (8 CPU devices in a subprocess) equals one device, and a checkpoint
written under one mesh restores under another."""

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


def test_data_fsdp_tensor_mesh_trains_like_one_device_and_reshards(tiny_overrides, tmp_path):
    mta = [
        *tiny_overrides,
        "model.num_heads=4",
        "model.attention.head_pre=grouped",
        "model.attention.head_group_size=2",
        "model.attention.head_post=grouped",
        "model.attention.kq_post.enabled=true",
        "model.attention.kq_post.c_k=3",
    ]
    one = train(tmp_path / "one", mta)
    mesh = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    eight = train(tmp_path / "eight", mta, *mesh, env=EIGHT_DEVICES)
    np.testing.assert_allclose(eight, one, rtol=2e-5)

    # Written on the 2x2x2 mesh, continued on one device.
    train(tmp_path / "moved", mta, *mesh, "train.steps=3", env=EIGHT_DEVICES)
    moved = train(tmp_path / "moved", mta)
    np.testing.assert_allclose(moved, one, rtol=2e-5)

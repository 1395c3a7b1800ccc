"""Head-parallel attention (mta/parallel.py): which layouts split heads, that the split really
hands each tensor shard its own heads, and the clear error for impossible layouts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mta.parallel import head_split

ROOT = Path(__file__).resolve().parent.parent
EIGHT_DEVICES = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def test_head_split_rules():
    assert not head_split(4, 2, tensor=1)
    assert head_split(4, 2, tensor=2)
    assert head_split(4, 1, tensor=2)  # MQA: the one kv head is replicated
    assert head_split(8, 8, tensor=2, mixing=(4, 2))  # 2 and 4 groups both split over 2
    assert not head_split(4, 4, tensor=2, mixing=("linear", 2))  # gathered: all heads per shard
    with pytest.raises(ValueError, match="6 attention heads do not split over mesh.tensor=4"):
        head_split(6, 6, tensor=4)
    with pytest.raises(ValueError, match="2 key/value heads do not split over mesh.tensor=4"):
        head_split(8, 2, tensor=4)
    with pytest.raises(ValueError, match="makes 1 group.*head_group_size <= 2"):
        head_split(4, 4, tensor=2, mixing=(4,))


SHARD_SHAPES = """
import jax, jax.numpy as jnp
from mta.parallel import over_heads

def attend(q, k, v, segment_ids, w):
    # every output entry says how many query, kv and kernel heads this shard saw
    seen = jnp.array([q.shape[2], k.shape[2], w.shape[0]], jnp.float32)
    return jnp.zeros(q.shape[:3] + (3,)) + seen

auto = (jax.sharding.AxisType.Auto,) * 3
mesh = jax.make_mesh((1, 4, 2), ("data", "fsdp", "tensor"), axis_types=auto)
q, kv, w = jnp.ones((4, 3, 8, 2)), jnp.ones((4, 3, 2, 2)), jnp.ones((8, 2, 3))
with jax.set_mesh(mesh):
    for split in (True, False):
        for split_kv in (True, False):
            out = jax.jit(over_heads, static_argnums=(0, 6, 7))(
                attend, q, kv, kv, {"w": w}, None, split, split_kv
            )
            print(split, split_kv, out[0, 0, 0].astype(int).tolist())
"""


def test_over_heads_gives_each_tensor_shard_its_own_heads():
    result = subprocess.run(
        [sys.executable, "-c", SHARD_SHAPES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=EIGHT_DEVICES,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:4] == [
        "True True [4, 1, 4]",  # 8 heads and 2 kv heads over 2 shards
        "True False [4, 2, 4]",
        "False True [8, 2, 8]",  # gathered: every shard sees all heads
        "False False [8, 2, 8]",
    ]


def test_impossible_tensor_layout_is_one_line_exit_2():
    result = subprocess.run(
        [
            sys.executable,
            "scripts/train.py",
            "--config",
            "configs/toy/block_mta_cpu.yaml",
            "--dry-run",
            "model.attention.head_post=grouped",  # 2 heads in 1 group cannot split over 2
            "mesh.data=4",
            "mesh.tensor=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=EIGHT_DEVICES,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: mesh.tensor: grouped head mixing"), lines

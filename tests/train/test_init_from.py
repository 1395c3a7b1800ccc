"""train.init_from: a run that starts from another run's weights (fresh optimizer, step 0)."""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mta.config import ConfigError
from mta.train.loop import train
from mta.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
MTA = ["model.attention.kq_pre.enabled=true", "model.attention.head_pre=linear"]


def saved_params(workdir: Path, step: int) -> dict:
    """{dotted path: array} of the params of checkpoint `step`."""
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore((workdir / "checkpoints" / str(step) / "state").absolute())
    leaves = jax.tree_util.tree_leaves_with_path(state["params"])
    return {jax.tree_util.keystr(p, simple=True, separator="."): np.asarray(x) for p, x in leaves}


def test_baseline_weights_start_an_mta_run(tiny_config, tmp_path):
    source = tmp_path / "baseline"
    train(tiny_config("train.steps=3"), source)
    # lr 0: the new run's first checkpoint holds exactly the params it started from
    frozen = ["train.lr=0.0", "train.steps=1", "train.warmup_steps=0", "checkpoint.every=1"]
    train(tiny_config(*MTA, *frozen, f"train.init_from={source}"), tmp_path / "mta")
    train(tiny_config(*MTA, *frozen), tmp_path / "fresh")
    loaded, baseline, fresh = (
        saved_params(tmp_path / name, step)
        for name, step in (("mta", 1), ("baseline", 3), ("fresh", 1))
    )
    mta_only = sorted(set(loaded) - set(baseline))
    assert mta_only and all("kq_pre" in p or "head_pre" in p for p in mta_only)
    for path, value in loaded.items():  # shared: the source's; MTA's kernels: their init
        np.testing.assert_array_equal(value, (baseline if path in baseline else fresh)[path])
    assert not all(np.array_equal(loaded[p], fresh[p]) for p in baseline)  # it did load
    assert [r["step"] for r in read_metrics(tmp_path / "mta") if "loss" in r] == [1]


def test_a_checkpoint_with_parameters_the_model_lacks_is_refused(tiny_config, tmp_path):
    train(tiny_config(*MTA, "train.steps=3"), tmp_path / "mta")
    cfg = tiny_config(f"train.init_from={tmp_path / 'mta' / 'checkpoints' / '3'}")
    with pytest.raises(ConfigError, match="not in the model: blocks.0.attn.head_pre"):
        train(cfg, tmp_path / "baseline")


def test_a_damaged_checkpoint_is_one_error(tiny_config, tmp_path):
    train(tiny_config("train.steps=3"), tmp_path / "source")
    # every file cut in half: which one holds the params (read) or only the optimizer state
    # (not read) varies between runs
    for path in (tmp_path / "source/checkpoints/3/state").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    cfg = tiny_config(f"train.init_from={tmp_path / 'source'}")
    with pytest.raises(ConfigError, match="checkpoints/3 is unreadable"):
        train(cfg, tmp_path / "run")


def test_a_path_without_checkpoint_is_one_line_and_exit_2(tiny_overrides, tmp_path):
    config = ["--config", "configs/toy/block_baseline_cpu.yaml"]
    command = [sys.executable, "scripts/train.py", *config, "--workdir", str(tmp_path / "run")]
    bad = f"train.init_from={tmp_path}"
    done = subprocess.run(
        [*command, *tiny_overrides, bad], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: train.init_from: {tmp_path} holds no checkpoint; give a run directory (with "
        "checkpoints/<step>/) or one checkpoint's step directory"
    ]
    assert not (tmp_path / "run" / "checkpoints").exists()

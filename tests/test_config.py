"""Config loading, validation and the train CLI's handling of bad input."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mta.cli import train as train_cli
from mta.config import ConfigError, kq_layer_indices, load_config, to_yaml

ROOT = Path(__file__).resolve().parent.parent
# Run configs; configs/sweeps and configs/eval hold sweep and suite files, tested with their tools.
CONFIGS = sorted(
    str(p.relative_to(ROOT))
    for p in (ROOT / "configs").rglob("*.yaml")
    if p.parent.name not in ("sweeps", "eval")
)
DOCUMENTED_COUNTS = {
    match[0]: int(match[1].replace(",", ""))
    for match in re.findall(
        r"^\| `(\S+)` \| ([\d,]+) \|$", (ROOT / "docs/param_counts.md").read_text(), re.M
    )
}


def run_train(*args):
    return subprocess.run(
        [sys.executable, "scripts/train.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_passes_dry_run(path, capsys):
    assert train_cli.main(["--config", path, "--dry-run"]) == 0
    summary = json.loads(capsys.readouterr().out)
    cfg = load_config(path)
    assert len(summary["layers"]) == cfg.model.num_layers
    assert summary["memory_per_device_gb"] > 0
    assert summary["params"] == DOCUMENTED_COUNTS.get(path), "update docs/param_counts.md"


def test_paper_table_8_parameter_counts():
    assert DOCUMENTED_COUNTS["configs/lm/880M_baseline.yaml"] == 876_553_728
    assert DOCUMENTED_COUNTS["configs/lm/880M_mta.yaml"] == 876_583_320


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train.stpes=3"], "unknown key 'train.stpes'"),
        (["model.attention.bogus=1"], "unknown key 'model.attention.bogus'"),
        (["train.steps=many"], "train.steps"),
        (["model.dim=1.5"], "model.dim"),
        (["model.attention.kq_pre.c_k=4"], "must be odd"),
        (["train.schedule=exp"], "allowed: constant, linear, cosine"),
        (["model.num_kv_heads=3", "model.num_heads=4", "model.dim=64"], "must divide"),
        (["data.block.length=10", "data.block.num_blocks=0"], "too short"),
    ],
)
def test_bad_overrides_exit_2_with_one_line(args, expected):
    result = run_train("--config", "configs/toy/block_mta_cpu.yaml", "--dry-run", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_missing_config_file_exits_2():
    result = run_train("--config", "configs/nope.yaml", "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: config file not found: configs/nope.yaml"


def test_bad_yaml_key_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'train.stepz'.*allowed here: steps"):
        load_config(path)


def test_overrides_and_round_trip(tmp_path):
    cfg = load_config(
        "configs/toy/block_mta_cpu.yaml",
        ["train.steps=200", "model.dim=128", "model.attention.kq_layers=[0,2]"],
    )
    assert (cfg.train.steps, cfg.model.dim, cfg.model.attention.kq_layers) == (200, 128, [0, 2])
    assert cfg.model.attention.kq_pre.c_k == 9  # from the file
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


def test_kq_layer_specs():
    assert kq_layer_indices("all", 3) == [0, 1, 2]
    assert kq_layer_indices([6, 2], 24) == [2, 6]
    assert kq_layer_indices({"every": 4, "start": 2}, 24) == [2, 6, 10, 14, 18, 22]
    for bad in ([24], [1, 1], "some", {"every": 0}):
        with pytest.raises(ConfigError, match="kq_layers"):
            kq_layer_indices(bad, 24)

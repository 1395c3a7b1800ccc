"""Config loading, validation and the train CLI's handling of bad input."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mta.cli import train as train_cli
from mta.config import ConfigError, kq_layer_indices, load_config, resume_diff, to_dict, to_yaml

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
def test_every_config_passes_dry_run(path, tokenizer_files, capsys):
    overrides = []
    tokenizer = load_config(path).data.tokenizer
    if tokenizer.kind != "byte" and not Path(tokenizer.path).is_file():  # made by `make lm-data`
        kind, file = tokenizer_files["unigram"]
        overrides = [f"data.tokenizer.kind={kind}", f"data.tokenizer.path={file}"]
    assert train_cli.main(["--config", path, "--dry-run", "--no-compile", *overrides]) == 0
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
        (["model.attention.kind=fox"], "kind: fox does not combine with key-query"),
        (["model.attention.attend_current=true"], "only stick_breaking"),
        (["model.canon=B"], "allowed: none, A, C, AC"),
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


# The data section of a workdir's config.yaml as written before the task registry: task settings
# in an untyped `params` mapping (and `block` always present), members likewise.
LEGACY_DATA = """
data:
  task: {task}
  data_dir: ~/tensorflow_datasets
  seq_len: 512
  packing: pack
  too_long: drop
  block: {{n: 5, l: 2, variant: all, length: 319, num_blocks: 0, num_train: 100000,
    num_validation: 1000, num_test: 1000, seed: 0}}
  params: {params}
  mixture: {mixture}
"""
LEGACY_MEMBERS = (
    "[{task: mqar, weight: 2.0, params: {num_pairs: 4, key_len: 2, length: 128}, block: {n: 5, "
    "l: 2, variant: all, length: 319, num_blocks: 0, num_train: 100000, num_validation: 1000, "
    "num_test: 1000, seed: 0}}, {task: block, weight: 1.0, params: {}, block: {n: 5, l: 2, "
    "variant: last, length: 64, num_blocks: 0, num_train: 500, num_validation: 10, num_test: 10,"
    " seed: 0}}]"
)


def legacy_workdir_config(tmp_path, task="niah", params="{num_needles: 4, length: 1024}"):
    """config.yaml of a run saved before the registry: today's resolved config with the data
    section in the old form."""
    saved = yaml.safe_load(to_yaml(load_config("configs/toy/block_mta_cpu.yaml")))
    mixture = LEGACY_MEMBERS if task == "mix" else "[]"
    saved["data"] = yaml.safe_load(LEGACY_DATA.format(task=task, params=params, mixture=mixture))[
        "data"
    ]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved, sort_keys=False))
    return path, saved


def test_a_config_yaml_written_before_the_registry_loads_and_resumes(tmp_path):
    path, saved = legacy_workdir_config(tmp_path)
    cfg = load_config(path)
    assert (cfg.data.niah.num_needles, cfg.data.niah.length, cfg.data.niah.num_asked) == (
        4,
        1024,
        1,
    )
    assert resume_diff(saved, to_dict(cfg)) == []  # the same run: resuming is allowed
    changed = load_config(path, ["data.niah.length=2048"])
    assert resume_diff(saved, to_dict(changed)) == ["data.niah.length: 1024 -> 2048"]

    path, saved = legacy_workdir_config(tmp_path, "mix", "{}")
    cfg = load_config(path)
    assert [m.task for m in cfg.data.mixture] == ["mqar", "block"]
    assert cfg.data.mixture[0].mqar.num_pairs == 4 and cfg.data.mixture[0].mqar.value_len == 3
    assert cfg.data.mixture[1].block.variant == "last" and cfg.data.mixture[1].weight == 1.0
    assert resume_diff(saved, to_dict(cfg)) == []
    assert resume_diff(saved, to_dict(load_config(path, ["data.mixture.0.mqar.length=256"])))


@pytest.mark.parametrize(
    "task, params, expected",
    [
        ("niah", "{needles: 4}", "data.params of task niah: unknown parameter 'needles'; allowed"),
        ("niah", "{num_asked: 5}", "data.niah: num_asked must be between 1 and 2, got 5"),
        ("mix", "{length: 5}", "data.params: not used with data.task: mix"),
    ],
)
def test_a_bad_legacy_config_yaml_is_one_line(tmp_path, task, params, expected):
    path, _ = legacy_workdir_config(tmp_path, task, params)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_on_off_survive_yaml_booleans():
    assert load_config(None, ["log.progress=off"]).log.progress == "off"
    assert load_config(None, ["log.progress=on"]).log.progress == "on"

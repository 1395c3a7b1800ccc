"""Ablation sweeps: grid expansion, the plan, a real tiny sweep with its report, bad sweep files."""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from mta.ablate import SweepError, execute, expand_grid, load_sweep, plan, status, variant_name
from mta.ablate.spec import parse_overrides, parse_sweep
from mta.cli import ablate as ablate_cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "ablate.py"
BASE = "configs/toy/block_baseline_cpu.yaml"
PRE = {"model.attention.kq_pre.enabled": True, "model.attention.kq_pre.c_q": 2}


@pytest.fixture(scope="module")
def ablate():
    """The ablate command, to call its main() in-process (fast)."""
    return ablate_cli


def write_sweep(tmp_path, **sweep) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def axis(name, *values):
    return {"name": name, "values": list(values)}


def test_grid_expansion_order_names_and_overrides():
    axes = [
        ("model", [{"name": "base", "overrides": (), "config": None},
                   {"name": "mta", "overrides": ("a=1",), "config": "m.yaml"}]),
        ("answer", [{"name": "all", "overrides": ("v=all",), "config": None},
                    {"name": "last", "overrides": ("v=last",), "config": None}]),
    ]  # fmt: skip
    variants = expand_grid(axes)
    assert [v.name for v in variants] == ["base-all", "base-last", "mta-all", "mta-last"]
    assert variants[3].settings == (("model", "mta"), ("answer", "last"))
    assert variants[3].overrides == ("a=1", "v=last") and variants[3].config == "m.yaml"
    assert variants[0].config is None and variant_name(["pre+post"]) == "pre+post"


def test_overrides_as_mapping_or_list():
    got = parse_overrides({"a.b": True, "c": 2e-3, "d": [2, 6], "e": None, "f": "pre"}, "x")
    assert got == ("a.b=true", "c=0.002", "d=[2, 6]", "e=null", "f=pre")
    assert parse_overrides(["a.b=1"], "x") == ("a.b=1",)
    with pytest.raises(SweepError, match="overrides must be"):
        parse_overrides(["a.b"], "x")


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({"base": BASE, "axes": [axis("a", {"name": "x"})], "sed": [1]}, "unknown key 'sed'"),
        ({"base": BASE}, "exactly one of 'axes'"),
        ({"base": BASE, "axes": [axis("a", {"name": "x", "overide": {}})]}, "unknown key"),
        ({"base": BASE, "axes": [axis("a", {"name": "x"}, {"name": "x"})]}, "more than one"),
        ({"base": BASE, "axes": [axis("a", {"name": "a/b"})]}, "letters, digits"),
        ({"base": BASE, "axes": [axis("a", {"name": "x"})], "seeds": [1, 1]}, "distinct"),
        ({"axes": [axis("a", {"name": "x"})]}, "has no config"),
        ({"base": BASE, "axes": [axis("a", {"name": "x"})], "common": {"train.seed": 3}}, "seed"),
        (
            {
                "base": BASE,
                "axes": [
                    axis("a", {"name": "x", "overrides": {"k": 1}}),
                    axis("b", {"name": "y", "overrides": {"k": 2}}),
                ],
            },
            "axes a and b both set k",
        ),
    ],
)
def test_invalid_sweeps_raise_one_line(sweep, message):
    with pytest.raises(SweepError, match=message) as err:
        parse_sweep(sweep, "s.yaml")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, runs, steps",
    [("pre_vs_post", 12, 3000), ("components", 18, 400), ("variants_lm", 14, 1000),
     ("cpu_lm", 1, 1000), ("paper_table1", 36, 100_000), ("table1_cpu", 18, 2000)],
)  # fmt: skip
def test_shipped_sweeps_validate(name, runs, steps, tmp_path):
    sweep = load_sweep(ROOT / "configs" / "sweeps" / f"{name}.yaml")
    planned = plan(sweep, tmp_path, "scripts/train.py")
    assert len(planned) == runs and {r.cfg.train.steps for r in planned} == {steps}
    assert {status(r) for r in planned} == {"new"}
    seeds = [r.seed for r in planned]
    assert seeds == sorted(seeds)  # seed by seed: a sweep stopped early has every variant once
    if name == "table1_cpu":
        mta = [r.cfg for r in planned if r.variant.name.startswith("mta")]
        assert all(
            c.model.attention.kq_pre.enabled and c.model.attention.kq_pre.c_k == 9 for c in mta
        )
        assert {c.data.block.variant for c in mta} == {"all", "first", "last"}
    if name == "paper_table1":
        n8 = [r.cfg for r in planned if r.variant.name == "mta-n8-first"]
        assert n8[0].data.block.n == 8 and n8[0].model.attention.kq_pre.c_k == 15


PRE_CK = "model.attention.kq_pre.c_k"
KQ = axis("kq", {"name": "none"}, {"name": "pre", "overrides": {**PRE, PRE_CK: 3}})
# Two variants that compile to the same programs (they differ in the data only), so most runs of
# the real sweep load their programs from the test session's compilation cache.
DATA = axis("data", {"name": "d0"}, {"name": "d1", "overrides": {"data.block.seed": 1}})


def tiny_sweep(tmp_path, tiny_overrides, grid=KQ, common=()):
    """A sweep file of 2 variants x 2 seeds of the tiny config."""
    common = [*tiny_overrides, *common]
    return write_sweep(tmp_path, base=BASE, seeds=[0, 1], common=common, axes=[grid])


def test_dry_run_prints_the_exact_commands(ablate, tiny_overrides, tmp_path, capsys):
    sweep = tiny_sweep(tmp_path, tiny_overrides)
    root = tmp_path / "root"
    assert ablate.main(["--sweep", str(sweep), "--root", str(root), "--dry-run", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [(r["variant"], r["seed"], r["status"]) for r in runs] == [  # seed by seed
        ("none", 0, "new"), ("pre", 0, "new"), ("none", 1, "new"), ("pre", 1, "new")
    ]  # fmt: skip
    command = runs[3]["command"]
    assert command[1:7] == ["-m", "mta.cli.train", "--config", BASE, "--workdir",
                            str(root / "pre" / "seed1")]  # fmt: skip
    assert command[7:] == [*tiny_overrides, *(f"{k}={str(v).lower()}" for k, v in PRE.items()),
                           f"{PRE_CK}=3", "train.seed=1"]  # fmt: skip
    assert ablate.main(["--sweep", str(sweep), "--root", str(root), "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert "4 of 4 runs to launch" in table and " ".join(command[7:]) in table
    assert not root.exists()


@pytest.mark.parametrize(
    "contents, message",
    [
        ({"base": BASE, "axes": [axis("a", {"name": "x"})], "parallel": 2}, "unknown key"),
        (
            {"base": BASE, "axes": [axis("a", {"name": "x"}, {"name": "y", "overrides":
                                               {"model.attention.kq_pre.cq": 2}})]},
            "variant y: override 'model.attention.kq_pre.cq=2': unknown key",
        ),
        ({"base": "configs/toy/nope.yaml", "axes": [axis("a", {"name": "x"})]}, "not found"),
        ({"base": BASE, "axes": [axis("a", {"name": "x", "overrides": ["model.dim=63"]})]},
         "model.dim"),
    ],
)  # fmt: skip
def test_bad_sweep_files_exit_2_with_one_line(ablate, contents, message, tmp_path, capsys):
    root = tmp_path / "root"
    sweep = write_sweep(tmp_path, **contents)
    assert ablate.main(["--sweep", str(sweep), "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not root.exists()
    assert ablate.main(["--sweep", str(tmp_path / "missing.yaml"), "--root", str(root)]) == 2
    assert "sweep file not found" in capsys.readouterr().err


def run_ablate(sweep, root, *flags):
    command = [sys.executable, str(SCRIPT), "--sweep", str(sweep), "--root", str(root), *flags]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def test_tiny_sweep_runs_skips_finished_and_reports(ablate, tiny_overrides, tmp_path, capsys):
    sweep, root = tiny_sweep(tmp_path, tiny_overrides, DATA), tmp_path / "root"
    first = run_ablate(sweep, root, "--parallel", "2")
    assert first.returncode == 0, first.stderr
    workdirs = [root / v / f"seed{s}" for v in ("d0", "d1") for s in (0, 1)]
    for workdir in workdirs:
        records = [
            json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
        ]
        assert records[-1]["step"] == 6 and "eval/exact_match_error" in records[-1]
        assert (workdir / "train.log").is_file() and (workdir / "checkpoints").is_dir()
    saved = yaml.safe_load((root / "d1/seed0/config.yaml").read_text())
    assert saved["train"]["seed"] == 0 and saved["data"]["block"]["seed"] == 1

    logs = [(w / "train.log").read_text() for w in workdirs]
    (root / "report.csv").unlink()
    assert ablate.main(["--sweep", str(sweep), "--root", str(root)]) == 0  # nothing to launch
    assert "4 of 4 runs already finished" in capsys.readouterr().err
    assert [(w / "train.log").read_text() for w in workdirs] == logs

    with (root / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["data"], r["seeds_finished"]) for r in rows] == [
        ("d0", "d0", "2"), ("d1", "d1", "2")
    ]  # fmt: skip
    assert all(float(r["eval/loss_mean"]) > 0 and r["eval/exact_match_error_std"] for r in rows)
    report = (root / "report.md").read_text()
    assert "| variant | data | validation loss | exact-match error (%) | seeds finished |" in report
    assert "| d1 | d1 | " in report and " | 2/2 |" in report
    for png in ("loss_curves.png", "final_metric.png"):
        assert (root / png).stat().st_size > 10_000
        (root / png).unlink()
    assert ablate.main(["--sweep", str(sweep), "--root", str(root), "--report"]) == 0
    assert "| d0 | d0 | " in capsys.readouterr().out and (root / "final_metric.png").is_file()

    # Longer training resumes every run; another lr is refused before anything runs.
    longer = tiny_sweep(tmp_path, tiny_overrides, DATA, common=["train.steps=8"])
    assert ablate.main(["--sweep", str(longer), "--root", str(root), "--dry-run", "--json"]) == 0
    assert {r["status"] for r in json.loads(capsys.readouterr().out)["runs"]} == {"resume"}
    other = tiny_sweep(tmp_path, tiny_overrides, DATA, common=["train.lr=0.1"])
    assert ablate.main(["--sweep", str(other), "--root", str(root)]) == 2
    assert "was trained with another config (train.lr: 0.003 -> 0.1)" in capsys.readouterr().err


def fake_runs(tmp_path, *programs):
    """Runs of a one-variant sweep whose commands are the given Python programs."""
    tmp_path.mkdir(exist_ok=True)
    sweep = tiny_sweep(tmp_path, [], axis("a", {"name": "x"}))
    run = plan(load_sweep(sweep), tmp_path / "root", "train.py")[0]
    return [
        dataclasses.replace(
            run, seed=i, workdir=tmp_path / f"w{i}", command=(sys.executable, "-c", p)
        )
        for i, p in enumerate(programs)
    ]


def test_execute_reports_failures_and_forwards_ctrl_c(tmp_path, capsys):
    runs = fake_runs(tmp_path, "print('ok')", "import sys; print('bad'); sys.exit(3)")
    assert execute(runs, parallel=2) == ({"x/seed0": 0, "x/seed1": 3}, None)
    assert (tmp_path / "w0/train.log").read_text() == "ok\n"
    assert "x/seed1 exited with 3: bad" in capsys.readouterr().err

    waits = "import signal, sys, time; signal.signal(2, lambda *a: sys.exit(130)); time.sleep(60)"
    runs = fake_runs(tmp_path / "b", waits, waits, "print('never')")
    threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    codes, signum = execute(runs, parallel=2)
    assert codes == {"x/seed0": 130, "x/seed1": 130} and signum == signal.SIGINT
    assert not (tmp_path / "b/w2").exists()

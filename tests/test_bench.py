"""`python scripts/bench.py` (mta/cli/bench.py over mta/bench/) end to end at toy sizes: JSON
lines with the expected keys, the markdown section, and one-line exit 2 on bad arguments. No
timing assertions (docs/benchmarks.md)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mta.bench import attention, data
from mta.bench.markdown import write_markdown

ROOT = Path(__file__).resolve().parents[1]
MACHINE_KEYS = {"cpu", "cores", "jax", "backend", "date"}
RECORD_KEYS = {"bench", "run_id", "command", "note", "machine", "status"}


def bench(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench.py"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )


def run_ok(tmp_path, *args) -> list[dict]:
    """Runs a subcommand with --out/--markdown; checks stdout == the JSONL and the markdown."""
    out, md = tmp_path / "results.jsonl", tmp_path / "bench.md"
    result = bench(*args, "--out", out, "--markdown", md, "--note", "test run")
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert printed and printed == [json.loads(line) for line in out.read_text().splitlines()]
    for record in printed:
        assert RECORD_KEYS <= set(record), record
        assert MACHINE_KEYS <= set(record["machine"])
        assert record["bench"] == args[0] and record["note"] == "test run"
    text = md.read_text()
    assert f"<!-- bench:{args[0]} begin -->" in text and f"<!-- bench:{args[0]} end -->" in text
    assert "Command: `python scripts/bench.py" in text and "Machine: " in text and "|---|" in text
    return printed


def test_attention(tmp_path):
    args = ["attention", "--variants", "jax_dpa", "mta_full", "--impls", "dense", "--T", 16]
    records = run_ok(tmp_path, *args, "--heads", 2, "--head-dim", 8, "--repeats", 2)
    rows = {(r["variant"], r["impl"]): r for r in records}
    assert set(rows) == {("jax_dpa", "xla"), ("mta_full", "dense")}
    for record in rows.values():
        assert record["status"] == "ok" and record["T"] == 16, record
        for name in ("time_ms_median", "peak_rss_mb", "rss_increase_mb", "time_vs_jax_dpa"):
            assert record[name] >= 0, name
    assert rows[("jax_dpa", "xla")]["time_vs_jax_dpa"] == 1.0
    assert "| mta_full | dense | 1 | 2 | 8 | 16 | ok |" in (tmp_path / "bench.md").read_text()


def test_attention_inputs_in_bfloat16():
    """--dtype bfloat16: q, k, v in bfloat16, the MTA parameters float32, the output bfloat16."""
    import jax
    import ml_dtypes

    inputs = attention.attention_inputs("mta_full", 1, 16, 2, 8, "bfloat16")
    assert {inputs[name].dtype for name in "qkv"} == {np.dtype(ml_dtypes.bfloat16)}
    assert inputs["kq_pre"].dtype == inputs["head_post"].dtype == np.float32
    for impl in ("dense", "blockwise"):
        out = jax.eval_shape(attention.attention_fn("mta_full", impl), inputs)
        assert out.dtype == ml_dtypes.bfloat16 and out.shape == (1, 16, 2, 8)


def test_decode(tmp_path):
    # attention level only: the model level (--model-config) compiles a whole Generator
    args = ["decode", "--contexts", 32, "--heads", 2, "--head-dim", 8, "--steps", 2]
    records = run_ok(tmp_path, *args, "--recompute-steps", 1)
    measured = {r["method"]: r for r in records if r.get("kind") != "target"}
    assert set(measured) == {"baseline", "mta_incremental", "mta_recompute"}
    for record in measured.values():
        assert record["status"] == "ok" and record["context"] == 32, record
        assert record["per_token_ms_median"] >= 0 and record["tokens_per_s"] > 0
    targets = [r for r in records if r.get("kind") == "target"]
    assert {t["metric"] for t in targets} == {
        "mta_incremental / baseline",
        "mta_recompute / mta_incremental",
    }
    met = {t["metric"]: t["met"] for t in targets}
    assert isinstance(met["mta_incremental / baseline"], bool)
    assert met["mta_recompute / mta_incremental"] is None  # the target is set at 4096 only
    assert "mta_incremental / baseline" in (tmp_path / "bench.md").read_text()


def test_train(tmp_path, tiny_overrides):
    # the tiny baseline of tests/conftest.py: its train step is compiled (and cached) by the
    # other CLI tests too
    args = ["train", "--config", "configs/toy/block_baseline_cpu.yaml", *tiny_overrides]
    records = run_ok(tmp_path, *args, "--steps", 1, "--warmup", 1, "--matmul-sizes", 64)
    (record,) = records
    for key in ("tokens_per_s", "mfu", "model_gflop_per_step", "matmul_peak_gflops", "params"):
        assert record[key] > 0, key
    assert record["attention"] == "softmax" and record["overrides"] == tiny_overrides
    (probe,) = record["matmul_probe_gflops"]  # one timed step, one matmul probe before it
    assert record["mfu"] == pytest.approx(record["model_gflops"] / probe, rel=1e-2)


def test_data(tmp_path, tiny_overrides):
    args = ["data", "--config", "configs/toy/block_baseline_cpu.yaml", *tiny_overrides]
    (record,) = run_ok(tmp_path, *args, "--batches", 3, "--train-steps", 1, "--corpus-mb", 0)
    for key in ("data_tokens_per_s", "train_tokens_per_s", "ratio"):
        assert record[key] > 0, key
    assert isinstance(record["met"], bool) and record["target"] == ">= 10"


def test_data_ingests_a_generated_corpus(tmp_path, tiny_overrides):
    config = ["--config", "configs/toy/block_baseline_cpu.yaml", *tiny_overrides, "data.seq_len=64"]
    args = ["data", *config, "--corpus-mb", 0.5]
    records = run_ok(tmp_path, *args, "--workers", 1, 2, "--batches", 2, "--train-steps", 1)
    ingest, read = records[:2], records[2]
    assert [r["workers"] for r in ingest] == [1, 2] and read["measure"] == "read"
    assert ingest[0]["tokens"] == ingest[1]["tokens"] > 0.4 * 2**20  # the same records
    for record in ingest:
        assert record["status"] == "ok" and record["files"] == 8
        assert record["ingest_tokens_per_s"] > 0 and record["peak_rss_mb"] > 0
    assert ingest[1]["worker_peak_rss_mb"] > 0  # 2 workers: spawned processes
    assert read["data_tokens_per_s"] > 0 and read["seq_len"] == 64


def test_accelerator_tiny_runs_every_part(tmp_path, tiny_overrides):
    data_dir = next(o for o in tiny_overrides if o.startswith("data.data_dir=")).split("=", 1)[1]
    args = ["accelerator", "--tiny", "--data-dir", data_dir, "--steps", 1, "--timeout", 600]
    records = run_ok(tmp_path, *args)
    parts = {r["part"] for r in records}
    assert parts == {"attention", "train", "loop", "decode"}, parts
    for record in records:
        assert record["status"] in ("ok", "unavailable"), record
        if record["status"] == "ok":
            assert record["value"] is not None and record["unit"], record
    (loop,) = [r for r in records if r["part"] == "loop"]
    assert loop["loop_step_s"] > 0 and loop["bare_step_s"] > 0 and isinstance(loop["met"], bool)
    mta = [r for r in records if r["part"] == "train" and r["name"] == "toy mta"]
    assert mta and mta[0]["ratio"] > 0 and isinstance(mta[0]["met"], bool)
    assert "jax_dpa xla" in {r["name"] for r in records if r["part"] == "attention"}
    text = (tmp_path / "bench.md").read_text()
    assert "| loop | train loop vs bare step |" in text


def test_import_tiny(tmp_path):
    (record,) = run_ok(tmp_path, "import", "--size", "tiny", "--dir", tmp_path)
    assert record["status"] == "ok" and record["size"] == "tiny" and record["shards"] == 4
    assert record["params"] == 106_816 and 0.4 <= record["checkpoint_mb"] < 0.5  # float32
    assert record["peak_rss_mb"] > 0 and record["import_s"] > 0
    ratio = record["peak_rss_mb"] / record["checkpoint_mb"]
    assert record["rss_ratio"] == pytest.approx(ratio, 0.05)
    assert "| tiny | 106816 | 4 |" in (tmp_path / "bench.md").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # the scratch is removed


def test_harness_tiny(tmp_path):
    pytest.importorskip("lm_eval")
    records = run_ok(tmp_path, "harness", "--tiny")
    assert [r["request"] for r in records] == ["loglikelihood", "generate_until"]
    for record in records:
        assert record["requests"] == 6 and record["requests_per_s"] > 0, record
    assert "| generate_until | 6 | 4 |" in (tmp_path / "bench.md").read_text()


def test_markdown_section_is_rewritten_in_place(tmp_path):
    machine = {"cpu": "cpu", "cores": 2, "memory_gb": 1, "jax": "x", "backend": "cpu",
               "devices": 1, "load_avg_1m": 0.0, "date": "today"}  # fmt: skip
    record = {"command": "python scripts/bench.py data", "note": "", "machine": machine,
              "config": "c.yaml", "ratio": 12.5, "met": True}  # fmt: skip
    md = tmp_path / "bench.md"
    md.write_text("# Benchmarks\n\nhand-written text\n")
    write_markdown(md, "data", [record], data.COLUMNS)
    write_markdown(md, "data", [{**record, "ratio": 3.25}], data.COLUMNS)
    text = md.read_text()
    assert text.count("<!-- bench:data begin -->") == 1 and "hand-written text" in text
    assert "| 3.25 |" in text and "| 12.5 |" not in text


@pytest.mark.parametrize(
    "args",
    [
        ["attention", "--variants", "nope"],
        ["attention", "--T", "0"],
        ["attention", "--T", "-8"],
        ["attention", "--variants", "diff", "--heads", "3"],
        ["attention", "--dtype", "float16"],
        ["decode", "--contexts", "0"],
        ["train", "--config", "configs/missing.yaml"],
        ["train", "model.no_such_key=1"],
        ["data", "--batches", "x"],
        ["accelerator", "--parts", "nope"],
        ["import", "--size", "70B"],
        ["harness", "--requests", "0"],
        ["harness", "--workdir", "/nonexistent/run"],
        ["frobnicate"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(args):
    result = bench(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "error" in result.stderr

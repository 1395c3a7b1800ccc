"""The eval command (scripts/eval.py) end to end on a tiny checkpoint, its user errors, and the
model calls under it (padded/bucketed teacher forcing and generation equal the plain unpadded
ones)."""

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from mta.cli import eval as eval_cli
from mta.config import load_config
from mta.data import pipeline
from mta.data.tokenizer import BOS
from mta.eval import metrics, tasks
from mta.eval.generate import Generator
from mta.eval.runner import Runner
from mta.eval.suite import PRIMARY, load_suite
from mta.train.mesh import make_mesh
from mta.train.state import abstract_model
from mta.train.step import eval_step, forward

ROOT = Path(__file__).resolve().parents[2]
TINY_SUITE = ROOT / "configs/eval/tiny.yaml"


@pytest.fixture(scope="module")
def trained(tiny_overrides, tmp_path_factory):
    """A workdir with a checkpoint at step 2 of the tiny baseline."""
    workdir = tmp_path_factory.mktemp("eval_cli") / "run"
    command = [sys.executable, "scripts/train.py", "--workdir", str(workdir)]
    command += ["--config", "configs/toy/block_baseline_cpu.yaml", *tiny_overrides, "train.steps=2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return workdir


def _expected_samples(suite) -> dict[str, int]:
    """Lines of samples/<task>.jsonl: one per example (per asked value for niah_loglik)."""
    counts = {}
    for task, specs in suite.tasks.items():
        for spec in specs:
            for cell in spec.cells():
                per_example = cell.coords["num_asked"] if task == "niah_loglik" else 1
                counts[task] = counts.get(task, 0) + per_example * suite.examples(spec)
    return counts


def test_tiny_suite_writes_every_output(trained, data_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained / "checkpoints", other / "checkpoints")
    shutil.copy(trained / "config.yaml", other / "config.yaml")
    command = [sys.executable, "scripts/eval.py", "--suite", str(TINY_SUITE)]
    command += ["--workdir", str(trained), "--workdir", str(other), "--data-dir", data_dir]
    command += ["--compare-dir", str(tmp_path / "compare")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summaries = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(summaries) == {str(trained), str(other)}

    suite = load_suite(TINY_SUITE)
    for workdir in (trained, other):
        out = workdir / "eval" / "2"
        results = json.loads((out / "results.json").read_text())
        assert results["step"] == 2 and results["suite"] == "tiny"
        assert list(results["results"]) == list(suite.tasks)
        for task, specs in suite.tasks.items():
            rows = results["results"][task]
            cells = sum(len(s.cells()) for s in specs)
            if task == "perplexity":
                cells = sum(len(s.buckets) for s in specs)  # buckets + "all"
            assert len(rows) == cells, task
            primary = [row[PRIMARY[task]] for row in rows]
            assert all(isinstance(v, float) for v in primary), (task, primary)
            assert all(row["examples"] >= 1 for row in rows)
            lines = (out / "samples" / f"{task}.jsonl").read_text().splitlines()
            if task != "perplexity":  # perplexity: one line per chunk
                assert len(lines) == _expected_samples(suite)[task], task
            assert all(isinstance(json.loads(line), dict) for line in lines)
            assert f"## {task}" in (out / "results.md").read_text()
        for key, value in results["summary"].items():
            assert value is not None, key
        # a 2-step model is close to uniform over the 259 byte tokens
        assert 100 < results["summary"]["perplexity/perplexity"] < 600
        assert 0 <= results["summary"]["niah/recall"] <= 1
        for name in ("niah_n1_r1", "niah_n2_r1", "niah_loglik_n2_r2", "babi"):
            assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    comparison = (tmp_path / "compare" / "comparison.md").read_text()
    assert "run@2" in comparison and "other@2" in comparison
    assert (tmp_path / "compare" / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def _run_main(argv, capsys) -> tuple[int, list[str]]:
    code = eval_cli.main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_bad_step_exits_2_with_one_line(trained, capsys):
    code, err = _run_main(
        ["--workdir", str(trained), "--step", "7", "--suite", str(TINY_SUITE)], capsys
    )
    assert code == 2
    assert err == [f"error: no checkpoint at step 7 in {trained}; available: 2"]


def test_missing_workdir_or_checkpoint_exits_2(trained, tmp_path, capsys):
    code, err = _run_main(["--workdir", str(tmp_path / "nope"), "--suite", str(TINY_SUITE)], capsys)
    assert code == 2 and len(err) == 1 and "workdir not found" in err[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(trained / "config.yaml", empty / "config.yaml")
    code, err = _run_main(["--workdir", str(empty), "--suite", str(TINY_SUITE)], capsys)
    assert code == 2 and len(err) == 1 and "no checkpoints" in err[0], err
    (empty / "checkpoints").mkdir()
    code, err = _run_main(["--workdir", str(empty), "--suite", str(TINY_SUITE)], capsys)
    assert code == 2 and len(err) == 1 and "no checkpoints" in err[0], err


BAD_SUITES = {
    "missing": (None, "suite file not found"),
    "yaml": ("tasks: [unclosed", "not valid YAML"),
    "no_tasks": ("name: x\n", "missing key 'tasks'"),
    "task": ("tasks:\n  sudoku: [{}]\n", "unknown task 'sudoku'"),
    "key": ("tasks:\n  niah: [{lenghts: [512]}]\n", "tasks.niah[0]: unknown key 'lenghts'"),
    "top_key": ("batchsize: 3\ntasks:\n  babi: [{}]\n", "unknown key 'batchsize'"),
    "type": ("tasks:\n  babi: [{lengths: [big]}]\n", "tasks.babi[0].lengths[0]: expected integer"),
    "pairs": ("tasks:\n  niah: [{needles: [1, 1]}]\n", "tasks.niah[0].needles[0]: expected a list"),
    "length": ("tasks:\n  niah: [{lengths: [20]}]\n", "length=20 is too short"),
    "buckets": ("tasks:\n  perplexity: [{buckets: [0]}]\n", "buckets an increasing list"),
    "examples": ("num_examples: 0\ntasks:\n  babi: [{}]\n", "num_examples: must be >= 1"),
}


@pytest.mark.parametrize("case", list(BAD_SUITES))
def test_bad_suite_file_exits_2_with_one_line(case, tmp_path, capsys):
    text, message = BAD_SUITES[case]
    path = tmp_path / "suite.yaml"
    if text is not None:
        path.write_text(text)
    code, err = _run_main(["--workdir", str(tmp_path), "--suite", str(path)], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "--rope-theta" in capsys.readouterr().out


@pytest.fixture(scope="module")
def random_model(tiny_overrides):
    """A random model (every parameter N(0, 0.5), drawn in numpy: nothing to compile) whose
    argmax and greedy tokens vary by row."""
    cfg = load_config(None, tiny_overrides)
    graphdef, abstract = abstract_model(cfg)
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda x: rng.normal(0.0, 0.5, x.shape).astype(x.dtype), abstract.to_pure_dict()
    )
    return graphdef, params, make_mesh(cfg.mesh)


def _reference(graphdef, params, batch):
    """Unpadded logits [B, T, V] and eval_step's sums, in one jitted call."""
    return forward(graphdef, params, batch), eval_step(graphdef, params, batch)


def test_padded_scoring_equals_eval_step_and_plain_forward(random_model, data_dir):
    graphdef, params, mesh = random_model
    spec = load_suite(TINY_SUITE).tasks["block"][0]
    records = tasks.load_test_records(spec.cells()[0], 4, data_dir)
    scored = Runner(graphdef, params, mesh, batch_size=3).score(records)  # 3 + 1 rows, padded
    batch = pipeline.pad_batch([pipeline.to_example(r, 999, "drop") for r in records], 31)
    logits_BTV, sums = jax.jit(functools.partial(_reference, graphdef))(params, batch)
    logp_BTV = np.asarray(jax.nn.log_softmax(logits_BTV, axis=-1))
    for row, s in enumerate(scored):
        np.testing.assert_array_equal(s.predicted, logp_BTV[row].argmax(-1))
        target_logp = np.take_along_axis(logp_BTV[row], s.targets[:, None], -1)[:, 0]
        np.testing.assert_allclose(s.logprob, target_logp, rtol=1e-5, atol=1e-5)
    assert sum(metrics.exact_match(s.correct, s.weights) for s in scored) == int(sums["exact"])
    loss_sum = sum(-(s.logprob * s.weights).sum() for s in scored)
    np.testing.assert_allclose(loss_sum, float(sums["loss_sum"]), rtol=1e-5)
    assert len({tuple(s.predicted) for s in scored}) > 1  # the check can tell rows apart


def test_bucketed_generation_equals_plain_generation(random_model):
    graphdef, params, mesh = random_model
    rng = np.random.default_rng(0)
    prompts = [np.concatenate([[BOS], rng.integers(97, 123, n)]) for n in (9, 20, 14)]
    got = Runner(graphdef, params, mesh, batch_size=2).generate(prompts, 6)  # fill + dummy rows
    plain = Generator(nnx.merge(graphdef, params))(prompts, 6, eos_id=None)
    assert got == [c.text for c in plain]
    assert len(set(got)) > 1

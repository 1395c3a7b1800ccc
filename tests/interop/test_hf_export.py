"""`mta export-hf`: export -> import returns every parameter bit for bit (baseline, MTA with
gating, DIFF), non-Llama exports say so in one line, bad arguments are one line, and, where
transformers can be run, an exported baseline loads in LlamaForCausalLM with our logits.

The transformers check runs when this Python imports torch and transformers, or with
MTA_TRANSFORMERS_PYTHON=/path/to/python naming an interpreter that does (CI has neither, so it is
skipped there); see docs/interop.md."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mta.cli import export_hf as export_cli
from mta.cli import train as train_cli
from mta.interop.hf_export import NO_CLASS
from mta.interop.hf_import import import_hf

from .helpers import FIXTURES, MTA, reference, run_config, workdir_logits, workdir_params


def _export(workdir, out, capsys, step=None) -> tuple[dict, str]:
    argv = ["--workdir", str(workdir), "--out", str(out)] + ([] if step is None else
                                                               ["--step", str(step)])  # fmt: skip
    assert export_cli.main(argv) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err.strip()


def _assert_bit_equal(first: dict, second: dict) -> None:
    assert sorted(first) == sorted(second)
    for name, value in first.items():
        assert value.dtype == second[name].dtype == np.float32, name
        assert np.array_equal(value.view(np.uint32), second[name].view(np.uint32)), name


@pytest.mark.parametrize("variant", ["baseline", "mta_gating"])
def test_export_import_round_trip_is_bit_exact(variant, tmp_path, data_dir, capsys):
    config, overrides = run_config(tmp_path, data_dir)
    if variant == "mta_gating":
        overrides += MTA + ["model.attention.group_norm=gating"]
    import_hf(FIXTURES / "untied_llama3", config, tmp_path / "a", overrides)
    summary, err = _export(tmp_path / "a", tmp_path / "x", capsys)
    assert summary["llama"] == (variant == "baseline")
    assert (err == "") == (variant == "baseline") and (variant == "baseline" or NO_CLASS in err)
    hf = json.loads((tmp_path / "x" / "config.json").read_text())
    assert hf["model_type"] == ("llama" if variant == "baseline" else "mta_transformer")
    # another seed: the gate weights (random at init) must be read from the export
    summary = import_hf(tmp_path / "x", config, tmp_path / "b", overrides + ["train.seed=7"])
    assert summary["initialised"] == []
    _assert_bit_equal(workdir_params(tmp_path / "a", 0), workdir_params(tmp_path / "b", 0))


def _fresh_workdir(config: str, overrides: list[str], workdir: Path) -> None:
    """What `mta train` writes before its first step: config.yaml, the tokenizer record and the
    initial state as checkpoint 0 (no training: quicker)."""
    from mta.config import load_config, to_yaml
    from mta.data import pipeline
    from mta.data.tokenizers import record
    from mta.train import checkpoint
    from mta.train.mesh import make_mesh
    from mta.train.state import TrainSetup

    cfg = load_config(config, overrides)
    manager = checkpoint.make_manager(workdir, cfg.checkpoint)
    checkpoint.save(manager, 0, TrainSetup(cfg, make_mesh(cfg.mesh)).init_state(), None)
    checkpoint.wait(manager)
    manager.close()
    (workdir / "config.yaml").write_text(to_yaml(cfg))
    record.write(workdir, pipeline.configured_tokenizer(cfg))


def test_diff_export_round_trips(tmp_path, data_dir, capsys):
    config, overrides = run_config(tmp_path, data_dir)
    tokenizer = FIXTURES / "mqa" / "tokenizer.json"
    shapes = ["model.vocab_size=320", "model.dim=32", "model.num_layers=2", "model.num_heads=2",
              "model.mlp_hidden=64", "model.tie_embeddings=false", "model.norm_eps=1e-06",
              "model.attention.kind=diff"]  # fmt: skip
    tok = ["data.tokenizer.kind=huggingface", f"data.tokenizer.path={tokenizer}"]
    _fresh_workdir(config, overrides + shapes + tok, tmp_path / "diff")
    summary, err = _export(tmp_path / "diff", tmp_path / "x", capsys)
    assert not summary["llama"] and err == f"note: {NO_CLASS}"
    import_hf(tmp_path / "x", config, tmp_path / "b", overrides + shapes)
    _assert_bit_equal(workdir_params(tmp_path / "diff", 0), workdir_params(tmp_path / "b", 0))


def test_bad_export_arguments(tmp_path, data_dir, capsys):
    config, overrides = run_config(tmp_path, data_dir)
    import_hf(FIXTURES / "mqa", config, tmp_path / "w", overrides)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    cases = [
        (["--workdir", str(tmp_path / "none"), "--out", str(tmp_path / "o")], "workdir not found"),
        (["--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "full")], "not an empty"),
        (["--workdir", str(tmp_path / "w"), "--step", "5", "--out", str(tmp_path / "o")],
         "no checkpoint at step 5"),
    ]  # fmt: skip
    for argv, expected in cases:
        assert export_cli.main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: ") and expected in line, line


def _transformers_python() -> str | None:
    """An interpreter with torch and transformers: this one, or $MTA_TRANSFORMERS_PYTHON."""
    if importlib.util.find_spec("transformers") and importlib.util.find_spec("torch"):
        import sys

        return sys.executable
    return os.environ.get("MTA_TRANSFORMERS_PYTHON")


def _transformers_logits(python: str, directory: Path, tokens: np.ndarray, tmp_path) -> np.ndarray:
    np.save(tmp_path / "tokens.npy", tokens)
    script = Path(__file__).with_name("transformers_logits.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [python, str(script), str(directory), str(tmp_path / "tokens.npy")]
    subprocess.run([*args, str(tmp_path / "out.npy")], check=True, env=env, timeout=300)
    return np.load(tmp_path / "out.npy")


@pytest.mark.parametrize("case", ["tied_gqa", "untied_llama3", "mqa"])
def test_transformers_loads_the_export_with_equal_logits(case, tmp_path, data_dir, capsys):
    python = _transformers_python()
    if python is None:
        pytest.skip("needs torch + transformers here or MTA_TRANSFORMERS_PYTHON")
    config, overrides = run_config(tmp_path, data_dir)
    workdir = tmp_path / "w"
    import_hf(FIXTURES / case, config, workdir, overrides)
    step = 0
    if case == "untied_llama3":  # trained weights, not the fixture's
        argv = ["--config", str(workdir / "config.yaml"), "--workdir", str(workdir)]
        assert train_cli.main(argv) == 0
        capsys.readouterr()
        step = 2
    _export(workdir, tmp_path / "x", capsys, step)
    tokens, fixture = reference(case)
    ours = workdir_logits(workdir, step, tokens)
    theirs = _transformers_logits(python, tmp_path / "x", tokens, tmp_path)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    assert (step == 0) == np.allclose(ours, fixture, atol=1e-5)

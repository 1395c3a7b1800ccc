"""`mta import-hf`: tiny Llama checkpoints made by transformers (tests/fixtures/hf_llama) give
transformers' logits after import (tied and untied, MHA, GQA, MQA, llama3 and linear RoPE
scaling, bfloat16 shards with an index), MTA added at identity computes the same function, the
imported workdir trains, evaluates and generates, and every bad input is one line (exit 2)."""

import json
import math

import numpy as np
import pytest

from mta.cli import eval as eval_cli
from mta.cli import generate as generate_cli
from mta.cli import import_hf as import_cli
from mta.cli import train as train_cli
from mta.interop.hf_import import import_hf
from mta.layers import rope_inv_freq

from .helpers import (
    CASES,
    FIXTURES,
    MTA,
    copy_case,
    edit_config,
    reference,
    run_config,
    workdir_logits,
)


@pytest.fixture
def run(tmp_path, data_dir):
    return run_config(tmp_path, data_dir)


@pytest.mark.parametrize("case", CASES)
def test_import_gives_transformers_logits(case, run, tmp_path):
    config, overrides = run
    summary = import_hf(FIXTURES / case, config, tmp_path / "w", overrides)
    assert summary["initialised"] == [] and summary["warnings"] == []
    tokens, expected = reference(case)
    np.testing.assert_allclose(workdir_logits(tmp_path / "w", 0, tokens), expected, atol=1e-5)


def test_transformers_4_rope_fields(run, tmp_path):
    """rope_theta + rope_scaling (transformers 4's config.json) read like rope_parameters."""
    directory = copy_case("untied_llama3", tmp_path)
    params = json.loads((directory / "config.json").read_text())["rope_parameters"]
    theta = params.pop("rope_theta")
    edit_config(directory, rope_parameters=..., rope_theta=theta, rope_scaling=params)
    config, overrides = run
    import_hf(directory, config, tmp_path / "w", overrides)
    tokens, expected = reference("untied_llama3")
    np.testing.assert_allclose(workdir_logits(tmp_path / "w", 0, tokens), expected, atol=1e-5)


def _llama3_inv_freq_loop(half, theta, factor, low, high, original) -> np.ndarray:
    """Llama 3.1's frequency scaling, one frequency at a time in float64 (Meta's reference)."""
    out = []
    for i in range(half):
        freq = theta ** (-(2 * i) / (2 * half))
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            out.append(freq)
        elif wavelen > original / low:
            out.append(freq / factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return np.array(out)


@pytest.mark.parametrize("original", [16, 64, 8192])
def test_llama3_frequencies_against_a_float64_loop(original):
    got = np.asarray(rope_inv_freq(32, 500000.0, ("llama3", 8.0, 1.0, 4.0, original)))
    want = _llama3_inv_freq_loop(32, 500000.0, 8.0, 1.0, 4.0, original)
    np.testing.assert_allclose(got, want, rtol=2e-6)
    linear = np.asarray(rope_inv_freq(32, 10000.0, ("linear", 4.0)))
    np.testing.assert_allclose(linear, 10000.0 ** (-np.arange(32) / 32) / 4, rtol=2e-6)


def test_mta_at_identity_equals_the_plain_model(run, tmp_path, capsys):
    config, overrides = run
    import_hf(FIXTURES / "untied_llama3", config, tmp_path / "plain", overrides)
    summary = import_hf(FIXTURES / "untied_llama3", config, tmp_path / "mta", overrides + MTA)
    added = {name.rsplit(".", 1)[1] for name in summary["initialised"]}
    assert added == {"kq_pre", "kq_post", "head_pre", "head_post"} and not summary["warnings"]
    tokens, _ = reference("untied_llama3")
    plain = workdir_logits(tmp_path / "plain", 0, tokens)
    np.testing.assert_allclose(workdir_logits(tmp_path / "mta", 0, tokens), plain, atol=1e-5)
    assert capsys.readouterr().err == ""
    gated = overrides + MTA + ["model.attention.group_norm=gating"]
    summary = import_hf(FIXTURES / "untied_llama3", config, tmp_path / "gated", gated)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: model.attention.group_norm=gating adds")
    assert "group norm" in line and "sigmoid gate" in line and "differ" in line
    assert summary["warnings"] == [line.removeprefix("warning: ")]
    assert np.abs(workdir_logits(tmp_path / "gated", 0, tokens) - plain).max() > 0.1
    import_hf(FIXTURES / "untied_llama3", config, tmp_path / "depth",
              overrides + ["model.attention.group_norm=depth_scaling"])  # fmt: skip
    assert "1 - lambda_init(layer)" in capsys.readouterr().err


def test_imported_workdir_trains_evaluates_and_generates(run, tmp_path, data_dir, capsys):
    config, overrides = run
    workdir = str(tmp_path / "w")
    argv = ["--hf-dir", str(FIXTURES / "tied_gqa"), "--config", config, "--workdir", workdir]
    assert import_cli.main([*argv, *overrides]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 0
    saved = (tmp_path / "w" / "config.yaml").read_text()
    assert "kind: huggingface" in saved and str(tmp_path / "w" / "hf" / "tokenizer.json") in saved
    assert train_cli.main(["--config", f"{workdir}/config.yaml", "--workdir", workdir]) == 0
    records = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)
    tokens, _ = reference("tied_gqa")
    assert not np.allclose(workdir_logits(workdir, 2, tokens), workdir_logits(workdir, 0, tokens))
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: t\nnum_examples: 2\nbatch_size: 2\ntasks:\n"
        "  perplexity:\n    - {seq_len: 32, buckets: [0, 16, 32], num_examples: 2}\n"
    )
    argv = ["--workdir", workdir, "--step", "0", "--suite", str(suite), "--data-dir", data_dir]
    assert eval_cli.main(argv) == 0
    assert (tmp_path / "w" / "eval" / "0" / "results.json").is_file()
    capsys.readouterr()
    argv = ["--workdir", workdir, "--step", "0", "--prompt", "The quick", "--max-new-tokens", "3"]
    assert generate_cli.main(argv) == 0
    assert "step 0: 3 tokens" in capsys.readouterr().err

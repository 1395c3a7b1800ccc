"""The other baselines in the model: exact parameter counts (also in --dry-run), packed rows
equal to their documents run alone, cached decoding equal to the full forward at every
position, and a few training steps of the block task through the command line."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mta.attention import decode as cached
from mta.model import Transformer, count_params
from mta.resolve import resolve_model

ROOT = Path(__file__).resolve().parents[2]
BASE = ["model.dim=32", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2"]
# E = 32, L = 2, H = 4, K = 2, D = 8, canon kernel 4
VARIANTS = {
    "fox": (["model.attention.kind=fox"], 2 * (32 * 4 + 4)),
    "fox_pro": (
        [
            "model.attention.kind=fox",
            "model.attention.qk_norm=true",
            "model.attention.output_gate=elementwise",
        ],
        2 * (32 * 4 + 4 + (4 + 2) * 8 + 32 * 4 * 8),
    ),
    "stick_breaking": (["model.attention.kind=stick_breaking"], 0),
    "stick_breaking_current": (
        ["model.attention.kind=stick_breaking", "model.attention.attend_current=true"],
        0,
    ),
    "gated_elementwise": (["model.attention.output_gate=elementwise"], 2 * 32 * 4 * 8),
    "gated_headwise": (["model.attention.output_gate=headwise"], 2 * 32 * 4),
    "canon_a": (["model.canon=A"], 2 * 4 * 32),
    "canon_ac_k3": (["model.canon=AC", "model.canon_kernel=3"], 2 * 2 * 3 * 32),
}


def _model(tiny_config, name, *extra):
    cfg = tiny_config(*BASE, *VARIANTS[name][0], *extra).model
    return Transformer(resolve_model(cfg), nnx.Rngs(0))


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_count_is_the_baseline_plus_the_variant(tiny_config, name):
    baseline = count_params(nnx.state(_model(tiny_config, "stick_breaking"), nnx.Param))
    assert baseline == 2 * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64 + 2 * 32) + 32 + 259 * 32
    model = _model(tiny_config, name)
    assert count_params(nnx.state(model, nnx.Param)) == baseline + VARIANTS[name][1]


@pytest.mark.parametrize("name", ["fox_pro", "stick_breaking", "gated_headwise", "canon_ac_k3"])
@pytest.mark.parametrize("impl", ["dense", "blockwise"])
def test_packed_rows_equal_documents_run_alone(tiny_config, name, impl):
    model = _model(tiny_config, name, f"model.attention.impl={impl}")
    tokens = jax.random.randint(jax.random.key(0), (1, 9), 3, 259)
    segment_ids = jnp.array([[0, 0, 0, 0, 1, 1, 1, 2, 2]])
    positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 0, 1]])
    packed = model(tokens, positions, segment_ids)
    for start, end in ((0, 4), (4, 7), (7, 9)):
        alone = model(tokens[:, start:end])
        np.testing.assert_allclose(packed[:, start:end], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["fox_pro", "stick_breaking", "gated_elementwise", "canon_ac_k3"])
def test_cached_decoding_equals_the_full_forward(tiny_config, name):
    """Right-padded prompts of lengths 5 and 3, then one token per step up to 9 positions."""
    model = _model(tiny_config, name)
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 3, 259)
    full = model(tokens)
    lengths = np.array([5, 3])
    logits, caches = model.prefill(tokens[:, :5], jnp.asarray(lengths), 9)
    for b, length in enumerate(lengths):
        np.testing.assert_allclose(logits[b, :length], full[b, :length], rtol=1e-5, atol=1e-5)
    rows = np.arange(2)
    for step in range(4):
        position = lengths + step
        logits, updates = model.decode(tokens[rows, position][:, None], caches)
        caches = tuple(map(cached.commit, caches, updates))
        np.testing.assert_allclose(logits[:, 0], full[rows, position], rtol=1e-5, atol=1e-5)


def _train(args):
    config = "configs/toy/block_baseline_cpu.yaml"
    command = [sys.executable, "scripts/train.py", "--config", config]
    return subprocess.run(command + args, cwd=ROOT, capture_output=True, text=True)


def test_dry_run_counts_and_names_the_variants(tiny_overrides):
    extra = ["model.attention.kind=fox", "model.attention.output_gate=headwise", "model.canon=C"]
    result = _train(["--dry-run", "--no-compile", *tiny_overrides, *extra])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # tiny: E = 32, 2 layers, 2 heads: fox gate 32 x 2 + 2, output gate 32 x 2, Canon C 4 x 32
    baseline = 2 * (4 * 32 * 32 + 3 * 32 * 64 + 2 * 32) + 32 + 259 * 32
    assert summary["params"] == baseline + 2 * (66 + 64 + 128)
    assert summary["layers"] == ["fox(output_gate headwise, canon C)"] * 2


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.attention.kind=fox", "model.attention.qk_norm=true"],
        ["model.attention.kind=stick_breaking", "model.attention.impl=blockwise"],
        ["model.attention.output_gate=elementwise"],
        ["model.canon=AC"],
    ],
    ids=["fox", "stick_breaking", "gated", "canon"],
)
def test_trains_the_block_task_through_the_cli(tiny_overrides, tmp_path, overrides):
    result = _train(["--workdir", str(tmp_path), *tiny_overrides, "train.steps=5", *overrides])
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 5 and all(np.isfinite(losses))

"""Checkpoints written before the redesign still restore: tests/fixtures/pre_redesign/ holds two
tiny runs (MTA with every parameter kind, and DIFF) written by the code of commit 6b38ccd (see
tests/fixtures/make_pre_redesign.py, which says how), with the logits the restored model gave
then and the loss of one resumed step."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mta.config import load_config
from mta.eval.restore import find_step, load_model
from mta.train.loop import train
from mta.train.metrics import read_metrics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pre_redesign"


@pytest.fixture
def workdir(request, tmp_path):
    """A writable copy of one fixture run (nothing is written to the repository)."""
    copy = tmp_path / request.param
    shutil.copytree(FIXTURES / request.param, copy)
    return copy


@pytest.mark.parametrize("workdir", ["mta", "diff"], indirect=True)
def test_old_checkpoint_restores_to_the_same_logits(workdir):
    step = find_step(workdir, None)
    assert step == 2
    loaded = load_model(workdir, step)  # the full state onto TrainSetup's target, as eval does
    names = {
        getattr(k, "key", None)
        for path, _ in jax.tree_util.tree_leaves_with_path(loaded.params)
        for k in path
    }
    if loaded.cfg.model.attention.kind == "diff":
        assert {"lambda_q1", "head_norm"} <= names
    else:
        assert {"kq_pre", "kq_post", "head_pre", "head_post", "out_norm", "gate_w"} <= names
    tokens = np.load(workdir / "tokens.npy")
    logits = nnx.merge(loaded.graphdef, loaded.params)(jnp.asarray(tokens))
    assert np.all(np.isfinite(logits))
    np.testing.assert_allclose(logits, np.load(workdir / "logits.npy"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("workdir", ["mta"], indirect=True)
def test_old_checkpoint_resumes_to_the_same_loss(workdir, data_dir):
    """Resuming restores params, optimizer state and data position: step 3 gives the loss the
    old code gave."""
    overrides = [f"data.data_dir={data_dir}", "train.steps=3"]
    train(load_config(workdir / "config.yaml", overrides), workdir)
    expected = json.loads((workdir / "resume.json").read_text())
    loss = {r["step"]: r["loss"] for r in read_metrics(workdir)}[expected["step"]]
    np.testing.assert_allclose(loss, expected["loss"], rtol=1e-5)

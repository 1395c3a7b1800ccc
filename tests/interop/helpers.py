"""What the interop tests share: the fixture checkpoints (tests/fixtures/hf_llama, made by
transformers with make_fixture.py), a small run config without model keys, and the logits of a
workdir's checkpoint."""

import json
import shutil
from pathlib import Path

import numpy as np
from flax import nnx

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf_llama"
CASES = ("tied_gqa", "untied_llama3", "mqa")
RUN = """data: {task: block, seq_len: 64, block: {num_blocks: 4, num_train: 2000,
  num_validation: 64, num_test: 64}}
train: {batch_size: 8, steps: 2, warmup_steps: 1, lr: 1.0e-2}
checkpoint: {every: 2}
log: {every: 1, tensorboard: false, progress: "off"}
eval: {every: 2, num_examples: 16, batch_size: 8}
"""
MTA = [  # pre and post conv on layer 1, linear pre and grouped post head mixing everywhere
    "model.attention.kq_pre.enabled=true",
    "model.attention.kq_pre.c_q=2",
    "model.attention.kq_pre.c_k=3",
    "model.attention.kq_post.enabled=true",
    "model.attention.kq_post.c_q=3",
    "model.attention.kq_post.c_k=5",
    "model.attention.kq_layers=[1]",
    "model.attention.head_pre=linear",
    "model.attention.head_post=grouped",
    "model.attention.head_group_size=2",
]


def run_config(tmp_path: Path, data_dir: str) -> tuple[str, list[str]]:
    """(a run config with no model keys, overrides putting its data in data_dir)."""
    path = tmp_path / "run.yaml"
    path.write_text(RUN)
    return str(path), [f"data.data_dir={data_dir}"]


def copy_case(case: str, tmp_path: Path) -> Path:
    """A writable copy of a fixture checkpoint directory."""
    out = tmp_path / f"hf_{case}"
    shutil.copytree(FIXTURES / case, out)
    return out


def edit_config(directory: Path, **changes) -> None:
    """Sets (or with value ... removes) config.json fields of a copied checkpoint."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def reference(case: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [2, 12], transformers' logits [2, 12, 320]) of a fixture."""
    saved = np.load(FIXTURES / case / "logits.npz")
    return saved["tokens"], saved["logits"]


def workdir_logits(workdir, step: int, tokens: np.ndarray) -> np.ndarray:
    """The logits of checkpoint `step` of `workdir` on tokens, float32 numpy."""
    from mta.eval.restore import load_model

    loaded = load_model(workdir, step)
    return np.asarray(nnx.merge(loaded.graphdef, loaded.params)(tokens))


def workdir_params(workdir, step: int) -> dict:
    """{'blocks.0.attn.wq': numpy array, ...} of a checkpoint."""
    import jax

    from mta.eval.restore import load_model

    params = load_model(workdir, step).params
    return {
        jax.tree_util.keystr(path, simple=True, separator="."): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }

"""Shared fixtures: a tiny config and a TFDS data dir built once per test session."""

import os

import jax
import pytest

from mta.config import load_config

TINY = [
    "model.rope_theta=10000.0",
    "model.dim=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.mlp_hidden=64",
    "data.block.num_blocks=4",
    "data.block.num_train=2000",
    "data.block.num_validation=64",
    "data.block.num_test=64",
    "train.batch_size=8",
    "train.steps=6",
    "train.warmup_steps=2",
    "train.lr=3e-3",
    "checkpoint.every=3",
    "log.every=1",
    "log.tensorboard=false",
    "eval.every=3",
    "eval.num_examples=32",
    "eval.batch_size=16",
]


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent XLA compilation cache for the session, shared with the subprocesses the
    tests launch (the same small programs are compiled by many of them)."""
    path = str(tmp_path_factory.mktemp("jax_cache"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    jax.config.update("jax_compilation_cache_dir", path)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def tiny_overrides(data_dir):
    """Dotted overrides for a model and run that train in seconds."""
    return TINY + [f"data.data_dir={data_dir}"]


@pytest.fixture
def tiny_config(tiny_overrides):
    def make(*extra):
        return load_config(None, tiny_overrides + list(extra))

    return make


@pytest.fixture(scope="session")
def tokenizer_files(tmp_path_factory):
    """{name: (kind, path)} of tiny tokenizers trained on the bundled corpus by `mta tokenizer
    train`: "unigram" and "bpe" (sentencepiece), "hf" (huggingface), "tiktoken"."""
    from mta.cli import tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    runs = {
        "unigram": ("sentencepiece", "sp_unigram.model", ["--algorithm", "unigram"]),
        "bpe": ("sentencepiece", "sp_bpe.model", ["--algorithm", "bpe"]),
        "hf": ("huggingface", "tokenizer.json", []),
        "tiktoken": ("tiktoken", "ranks.tiktoken", []),
    }
    files = {}
    for name, (kind, file, extra) in runs.items():
        path = str(root / file)
        argv = ["train", "--kind", kind, "--vocab-size", "400", "--output", path, *extra]
        assert tokenizer.main(argv) == 0
        files[name] = (kind, path)
    return files

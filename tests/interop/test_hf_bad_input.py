"""Every input `mta import-hf` cannot import is refused with one line naming it (exit 2), and
nothing is checkpointed: config.json fields the model cannot express, missing or broken files,
missing, unexpected or misshapen tensors, and configs that contradict the checkpoint."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mta.cli import import_hf as import_cli

from .helpers import FIXTURES, copy_case, edit_config, run_config

FIELDS = {  # config.json change -> expected text of the one line
    "activation": ({"hidden_act": "gelu"}, "hidden_act='gelu': only silu"),
    "attention bias": ({"attention_bias": True}, "attention_bias=True: no biases"),
    "mlp bias": ({"mlp_bias": True}, "mlp_bias=True: no biases"),
    "sliding window": (
        {"model_type": "mistral", "sliding_window": 4096},
        "sliding_window=4096: full causal attention only",
    ),
    "rope yarn": (
        {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
        "rope_scaling.rope_type='yarn': not implemented",
    ),
    "rope dynamic (transformers 4)": (
        {"rope_parameters": ..., "rope_scaling": {"type": "dynamic", "factor": 2.0}},
        "rope_type='dynamic': not implemented",
    ),
    "partial rotary": ({"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
    "dropout": ({"attention_dropout": 0.1}, "attention_dropout=0.1: no dropout"),
    "another architecture": ({"model_type": "gpt2"}, "model_type='gpt2': a Llama-family"),
    "missing size": ({"hidden_size": ...}, "hidden_size=None: a positive integer is required"),
    "unknown field": ({"qk_layernorm": True}, "qk_layernorm=True: not a field this importer"),
    "quantized": (
        {"quantization_config": {"quant_method": "bitsandbytes"}},
        "quantization_config=",
    ),
    "llama3 without its factors": (
        {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}},
        "llama3 needs low_freq_factor",
    ),
}


def _import(capsys, hf_dir, workdir, config, overrides) -> list[str]:
    argv = ["--hf-dir", str(hf_dir), "--config", config, "--workdir", str(workdir)]
    code = import_cli.main([*argv, *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    assert not (workdir / "checkpoints").exists()
    return err[0]


@pytest.mark.parametrize("case", FIELDS)
def test_config_fields_the_model_cannot_express(case, tmp_path, data_dir, capsys):
    changes, expected = FIELDS[case]
    directory = copy_case("tied_gqa", tmp_path)
    edit_config(directory, **changes)
    config, overrides = run_config(tmp_path, data_dir)
    line = _import(capsys, directory, tmp_path / "w", config, overrides)
    assert expected in line, line


def test_harmless_fields_are_accepted(tmp_path, data_dir, capsys):
    directory = copy_case("tied_gqa", tmp_path)
    edit_config(directory, max_position_embeddings=131072, pretraining_tp=2, use_cache=False,
                torch_dtype="bfloat16", pad_token_id=1, some_new_flag=False)  # fmt: skip
    config, overrides = run_config(tmp_path, data_dir)
    argv = ["--hf-dir", str(directory), "--config", config, "--workdir", str(tmp_path / "w")]
    assert import_cli.main([*argv, *overrides]) == 0, capsys.readouterr().err


def _rewrite(path, change) -> None:
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def _files_cases(directory, sharded):
    """name -> (function breaking a copied checkpoint, expected text)."""
    single = directory / "model.safetensors"
    index = sharded / "model.safetensors.index.json"

    def drop(name):
        return lambda tensors: tensors.pop(name)

    def add(name, value):
        return lambda tensors: tensors.update({name: value})

    def set_index(change):
        data = json.loads(index.read_text())
        change(data["weight_map"])
        index.write_text(json.dumps(data))

    return {
        "no config.json": (lambda: (directory / "config.json").unlink(), "config.json not found"),
        "config.json not JSON": (
            lambda: (directory / "config.json").write_text("{"), "not readable JSON"),
        "no tokenizer.json": (lambda: (directory / "tokenizer.json").unlink(), "no tokenizer"),
        "no safetensors": (lambda: single.unlink(), "no *.safetensors files"),
        "not safetensors": (
            lambda: single.write_bytes(b"\x00" * 64), "not a readable safetensors file"),
        "missing tensor": (
            lambda: _rewrite(single, drop("model.layers.1.mlp.up_proj.weight")),
            "tensors missing: model.layers.1.mlp.up_proj.weight",
        ),
        "unexpected tensor": (
            lambda: _rewrite(single, add("model.layers.0.self_attn.q_proj.bias",
                                         np.zeros(32, np.float32))),
            "tensors unexpected: model.layers.0.self_attn.q_proj.bias",
        ),  # fmt: skip
        "wrong shape": (
            lambda: _rewrite(single, add("model.norm.weight", np.ones(33, np.float32))),
            "shape of: model.norm.weight (33,) (the model needs (32,))",
        ),
        "integer weights": (
            lambda: _rewrite(single, add("model.norm.weight", np.ones(32, np.int8))),
            "model.norm.weight: dtype I8",
        ),
        "vocabulary of config.json": (
            lambda: edit_config(directory, vocab_size=400),
            "model.embed_tokens.weight (320, 32) (the model needs (400, 32))",
        ),
        "tokenizer beyond the vocabulary": (
            lambda: edit_config(directory, vocab_size=200), "model.vocab_size: 200 is smaller"),
        "index names a missing shard": (
            lambda: set_index(lambda m: m.update({"model.norm.weight": "nope.safetensors"})),
            "names nope.safetensors, which does not exist",
        ),
        "index puts a tensor in the wrong shard": (
            lambda: set_index(
                lambda m: m.update({"model.norm.weight": m["model.embed_tokens.weight"]})
                if m["model.norm.weight"] != m["model.embed_tokens.weight"]
                else m.update({"model.norm.weight": m["lm_head.weight"]})
            ),
            "puts model.norm.weight in",
        ),
        "shards without an index": (lambda: index.unlink(), "several shards"),
    }  # fmt: skip


CASE_NAMES = list(_files_cases(FIXTURES, FIXTURES))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_broken_checkpoint_files(case, tmp_path, data_dir, capsys):
    directory = copy_case("tied_gqa", tmp_path)
    sharded = copy_case("untied_llama3", tmp_path)
    breaks, expected = _files_cases(directory, sharded)[case]
    breaks()
    target = sharded if "index" in case else directory
    config, overrides = run_config(tmp_path, data_dir)
    line = _import(capsys, target, tmp_path / "w", config, overrides)
    assert expected in line, line


CONFIGS = {  # overrides of the run -> expected text
    "contradicting width": (["model.dim=64"], "model.dim: the config sets 64 but"),
    "contradicting kv heads": (["model.num_kv_heads=4"], "model.num_kv_heads: the config sets 4"),
    "contradicting rope": (["model.rope_theta=500000.0"], "model.rope_theta: the config sets"),
    "diff attention": (["model.attention.kind=diff"], "tensors shape of"),
    "qk norm": (["model.attention.qk_norm=true"], "_norm: this config adds a parameter"),
    "canon": (["model.canon=A"], "blocks.0.canon_A: this config adds a parameter with no"),
    "uniform kernels": (
        ["model.attention.kq_pre.enabled=true", "model.attention.kernel_init=uniform"],
        "model.attention.kernel_init: uniform; an imported model starts",
    ),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_configs_that_do_not_fit(case, tmp_path, data_dir, capsys):
    extra, expected = CONFIGS[case]
    config, overrides = run_config(tmp_path, data_dir)
    line = _import(capsys, FIXTURES / "tied_gqa", tmp_path / "w", config, overrides + extra)
    assert expected in line, line


def test_bad_config_files(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("model: [")
    for config, expected in ((tmp_path / "none.yaml", "config file not found"),
                             (tmp_path / "bad.yaml", "not valid YAML")):  # fmt: skip
        line = _import(capsys, FIXTURES / "mqa", tmp_path / "w", str(config), [])
        assert expected in line, line


def test_workdir_with_checkpoints_is_refused(tmp_path, data_dir, capsys):
    config, overrides = run_config(tmp_path, data_dir)
    argv = ["--hf-dir", str(FIXTURES / "mqa"), "--config", config, "--workdir", str(tmp_path / "w")]
    assert import_cli.main([*argv, *overrides]) == 0
    capsys.readouterr()
    assert import_cli.main([*argv, *overrides]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "already has checkpoints; import into a new workdir" in line

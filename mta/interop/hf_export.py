"""A checkpoint of a workdir -> a Hugging Face directory: model.safetensors, config.json and
tokenizer.json.

    summary = export_hf("runs/x", step=None, out="export/")   # the newest step

A baseline (softmax attention with RoPE, MHA, GQA or MQA, nothing else) is a LlamaForCausalLM
checkpoint that transformers loads with the same logits. Every other model (MTA, Talking-heads,
DIFF, ...) is written in the same format, its extra parameters under their own names in this
model's layout (mta/interop/hf_weights.py) and the model section of its config under
config.json's `mta` key, with model_type `mta_transformer`, which transformers has no class for;
`mta import-hf` reads such an export back. Parameters are written in float32, as trained, so
export -> import returns them bit for bit.
"""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import save_file

from mta.config import ConfigError
from mta.interop import hf_weights
from mta.interop.hf_config import hf_config

NO_CLASS = (
    "this model is not a Llama: transformers has no class for it (config.json model_type "
    "mta_transformer); `mta import-hf` reads it back"
)


def _tensors(params: dict) -> tuple[dict[str, np.ndarray], bool]:
    """({Hugging Face name: array}, whether every parameter is a Llama one)."""
    tensors, llama = {}, True
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(params):
        path = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in key_path)
        name, layout, is_llama = hf_weights.hf_name(path)
        llama &= is_llama
        tensors[name] = hf_weights.to_hf(np.asarray(jax.device_get(leaf), np.float32), layout)
    return tensors, llama


def _is_llama(model) -> bool:
    """Whether the model computes what LlamaForCausalLM does with the same weights."""
    a = model.attention
    return a.kind == "softmax" and a.rope in ("auto", "on") and model.canon == "none"


def export_hf(workdir, step: int | None, out, tokenizer: str | None = None) -> dict:
    """Writes checkpoint `step` (None: the newest) of `workdir` to the directory `out` (new or
    empty). Returns {out, step, llama, tensors}; `llama` false means transformers cannot load
    it (NO_CLASS). ConfigError for a missing workdir or checkpoint, a non-empty `out`, or a
    tokenizer that is not a Hugging Face tokenizer.json."""
    from mta.eval import restore

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty directory")
    step = restore.find_step(workdir, step)
    loaded = restore.load_model(workdir, step, tokenizer=tokenizer)
    if loaded.tok.kind not in ("huggingface", "byte"):
        raise ConfigError(
            f"the run's tokenizer is {loaded.tok.kind}: export needs a Hugging Face "
            "tokenizer.json (or the byte tokenizer, exported without one)"
        )
    tensors, llama_params = _tensors(loaded.params)
    llama = llama_params and _is_llama(loaded.cfg.model)
    model = loaded.cfg.model
    head_dim = model.head_dim or model.dim // (
        2 * model.num_heads if model.attention.kind == "diff" else model.num_heads
    )
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(model, head_dim, loaded.tok, llama)
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    if loaded.tok.kind == "huggingface":
        shutil.copyfile(Path(loaded.tok.path).expanduser(), out / "tokenizer.json")
    return {"out": str(out), "step": step, "llama": llama, "tensors": len(tensors)}

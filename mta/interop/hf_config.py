"""A Hugging Face Llama `config.json` <-> this model's `model.*` keys.

    overrides = model_overrides(json.load(open("config.json")))   # {"model.dim": 2048, ...}
    hf = hf_config(cfg.model, tok)                                 # the dict of a config.json

Every field of a config.json that the model cannot express is refused with one line naming it
(ImportError_, exit 2 from the CLI): another architecture, activation, biases, sliding windows,
RoPE types other than default/linear/llama3, partial rotary embeddings, dropout, quantization.
Fields that change nothing here (token ids, dtype, max_position_embeddings, ...) are accepted.
"""

import dataclasses
from typing import Any

from mta.config import ConfigError

MODEL_TYPES = ("llama", "mistral")  # the same decoder; mistral's sliding window must be off
OWN_MODEL_TYPE = "mta_transformer"  # what export-hf writes for models transformers cannot run
ROPE_TYPES = ("default", "linear", "llama3")
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
REQUIRED += ("num_attention_heads",)
# Fields whose value may be anything: bookkeeping, generation defaults, training-time options
# of transformers that do not change the function.
HARMLESS = {
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
    "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "initializer_range",
    "max_position_embeddings", "pretraining_tp", "_name_or_path", "tie_word_embeddings",
    "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "head_dim",
    "num_key_value_heads", "hidden_act", "attention_bias", "mlp_bias", "attention_dropout",
    "sliding_window", "use_sliding_window", "max_window_layers", "mta",
    "output_attentions", "output_hidden_states", "return_dict", "tokenizer_class",
    "id2label", "label2id", "torchscript", "chunk_size_feed_forward", "problem_type",
}  # fmt: skip


class HFConfigError(ConfigError):
    """A config.json field the model cannot express, or a missing or malformed one."""


def _refuse(field: str, value: Any, why: str) -> HFConfigError:
    return HFConfigError(f"config.json: {field}={value!r}: {why}")


def rope(hf: dict) -> tuple[float, dict]:
    """(rope_theta, {model.rope_scaling.* values}) from rope_theta / rope_scaling (transformers
    4) or rope_parameters (transformers 5); HFConfigError for a type not implemented."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise _refuse("rope_scaling.rope_type", kind, f"not implemented; allowed: {ROPE_TYPES}")
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise _refuse("partial_rotary_factor", partial, "RoPE on every dimension only (1.0)")
    if params.get("attention_factor") not in (None, 1.0):
        raise _refuse("rope_scaling.attention_factor", params["attention_factor"], "only 1.0")
    if kind == "default":
        return theta, {"kind": "none"}
    if kind == "linear":
        return theta, {"kind": "linear", "factor": float(params["factor"])}
    try:
        original = params.get("original_max_position_embeddings", hf["max_position_embeddings"])
        return theta, {
            "kind": "llama3",
            "factor": float(params["factor"]),
            "low_freq_factor": float(params["low_freq_factor"]),
            "high_freq_factor": float(params["high_freq_factor"]),
            "original_max_position": int(original),
        }
    except KeyError as err:
        raise _refuse("rope_scaling", params, f"llama3 needs {err.args[0]}") from None


def check_expressible(hf: dict) -> None:
    """HFConfigError (one line) naming the first field the model cannot express."""
    model_type = hf.get("model_type")
    if model_type not in (*MODEL_TYPES, OWN_MODEL_TYPE):
        raise _refuse("model_type", model_type, f"a Llama-family model: {', '.join(MODEL_TYPES)}")
    for field in REQUIRED:
        if not isinstance(hf.get(field), int) or hf[field] <= 0:
            raise _refuse(field, hf.get(field), "a positive integer is required")
    checks = [
        ("hidden_act", hf.get("hidden_act", "silu"), "silu", "only silu (SwiGLU)"),
        ("attention_bias", hf.get("attention_bias", False), False, "no biases here"),
        ("mlp_bias", hf.get("mlp_bias", False), False, "no biases here"),
        ("attention_dropout", hf.get("attention_dropout", 0.0), 0.0, "no dropout here"),
        ("sliding_window", hf.get("sliding_window"), None, "full causal attention only (null)"),
        ("use_sliding_window", hf.get("use_sliding_window", False), False, "no sliding window"),
    ]
    for field, value, allowed, why in checks:
        if value != allowed and not (field == "sliding_window" and model_type == "llama"):
            raise _refuse(field, value, why)
    rope(hf)
    for field, value in hf.items():
        known = field in HARMLESS or field in REQUIRED
        if not known and value not in (None, False, 0, 0.0, "", [], {}):
            raise _refuse(field, value, "not a field this importer knows the meaning of")


def model_overrides(hf: dict) -> dict[str, Any]:
    """The model.* values of a config.json (after check_expressible): the shapes, tying,
    RoPE and the norm's eps."""
    check_expressible(hf)
    heads = hf["num_attention_heads"]
    theta, scaling = rope(hf)
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    values = {
        "model.vocab_size": hf["vocab_size"],
        "model.dim": hf["hidden_size"],
        "model.num_layers": hf["num_hidden_layers"],
        "model.num_heads": heads,
        "model.num_kv_heads": hf.get("num_key_value_heads") or heads,
        "model.head_dim": head_dim,
        "model.mlp_hidden": hf["intermediate_size"],
        "model.tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "model.rope_theta": theta,
        "model.norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
    }
    defaults = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    defaults["original_max_position"] = 8192
    for key, value in (defaults | scaling).items():
        values[f"model.rope_scaling.{key}"] = value
    return values


def hf_config(model, head_dim: int, tok, llama: bool) -> dict:
    """The config.json of a model section (`model`, a ModelConfig) whose layers have
    `head_dim`; `tok` gives the special ids. llama: a LlamaForCausalLM checkpoint, else this
    project's own type (transformers has no class for it), with the model section under `mta`."""
    scaling = model.rope_scaling
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": model.rope_theta}
    if scaling.kind == "linear":
        rope_parameters |= {"rope_type": "linear", "factor": scaling.factor}
    elif scaling.kind == "llama3":
        rope_parameters |= {
            "rope_type": "llama3",
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_position,
        }
    config = {
        "architectures": ["LlamaForCausalLM" if llama else "MtaTransformerForCausalLM"],
        "model_type": "llama" if llama else OWN_MODEL_TYPE,
        "vocab_size": model.vocab_size,
        "hidden_size": model.dim,
        "intermediate_size": model.mlp_hidden,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads,
        "num_key_value_heads": model.num_kv_heads or model.num_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": model.norm_eps,
        "rope_theta": model.rope_theta,
        "rope_parameters": rope_parameters,  # transformers 5; rope_scaling for 4.x
        "rope_scaling": None
        if scaling.kind == "none"
        else {k: v for k, v in rope_parameters.items() if k != "rope_theta"},
        "tie_word_embeddings": model.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "pad_token_id": tok.pad_id,
        "max_position_embeddings": max(scaling.original_max_position, 2048),
        "torch_dtype": "float32",
    }
    if not llama:
        config["mta"] = {"model": dataclasses.asdict(model)}
    return config

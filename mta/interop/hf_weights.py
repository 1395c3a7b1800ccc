"""Where each parameter of this model lives in a Hugging Face Llama checkpoint, and the layout
change between them.

    embed [V, E]                   model.embed_tokens.weight [V, E]
    unembed [E, V] (untied)        lm_head.weight [V, E]
    final_norm.weight [E]          model.norm.weight
    blocks.i.attn_norm.weight      model.layers.i.input_layernorm.weight
    blocks.i.mlp_norm.weight       model.layers.i.post_attention_layernorm.weight
    blocks.i.attn.wq [E, H, D]     model.layers.i.self_attn.q_proj.weight [H D, E] (k, v: K heads)
    blocks.i.attn.wo [H, D, E]     model.layers.i.self_attn.o_proj.weight [E, H D]
    blocks.i.mlp.gate, up [E, F]   model.layers.i.mlp.gate_proj, up_proj.weight [F, E]
    blocks.i.mlp.down [F, E]       model.layers.i.mlp.down_proj.weight [E, F]
    blocks.i.attn.X (MTA, DIFF)    model.layers.i.self_attn.X, in this model's layout

Heads are the outer factor of the projections' `(H D)` rows in both (query head h reads kv head
h // (H / K) in both), and both apply RoPE in the rotate-half layout, so q and k rows need no
permutation. Any parameter without a Llama counterpart keeps its own layout under its path.
"""

import numpy as np

LLAMA = {  # path under a block -> (Hugging Face name under model.layers.i, layout)
    ("attn_norm", "weight"): ("input_layernorm.weight", "same"),
    ("mlp_norm", "weight"): ("post_attention_layernorm.weight", "same"),
    ("attn", "wq"): ("self_attn.q_proj.weight", "in_heads"),
    ("attn", "wk"): ("self_attn.k_proj.weight", "in_heads"),
    ("attn", "wv"): ("self_attn.v_proj.weight", "in_heads"),
    ("attn", "wo"): ("self_attn.o_proj.weight", "heads_out"),
    ("mlp", "gate"): ("mlp.gate_proj.weight", "transpose"),
    ("mlp", "up"): ("mlp.up_proj.weight", "transpose"),
    ("mlp", "down"): ("mlp.down_proj.weight", "transpose"),
}
TOP = {
    ("embed",): ("model.embed_tokens.weight", "same"),
    ("unembed",): ("lm_head.weight", "transpose"),
    ("final_norm", "weight"): ("model.norm.weight", "same"),
}
# Tensors of Hugging Face checkpoints that hold no parameter (older Llama releases saved RoPE's
# inverse frequencies); skipped on import.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def hf_name(path: tuple) -> tuple[str, str, bool]:
    """(Hugging Face name, layout, is a Llama parameter) of a params path such as
    ("blocks", 3, "attn", "wq")."""
    if path in TOP:
        return (*TOP[path], True)
    if path[0] == "blocks":
        prefix, rest = f"model.layers.{path[1]}.", tuple(path[2:])
        if rest in LLAMA:
            name, layout = LLAMA[rest]
            return prefix + name, layout, True
        parts = ["self_attn" if rest[0] == "attn" else rest[0], *map(str, rest[1:])]
        return prefix + ".".join(parts), "same", False
    return "model." + ".".join(map(str, path)), "same", False


def hf_shape(shape: tuple, layout: str) -> tuple:
    """The Hugging Face tensor's shape of a parameter of `shape` in `layout`."""
    if layout == "in_heads":  # [E, A, B] <- [A B, E]
        return (shape[1] * shape[2], shape[0])
    if layout == "heads_out":  # [A, B, E] <- [E, A B]
        return (shape[2], shape[0] * shape[1])
    if layout == "transpose":
        return tuple(reversed(shape))
    return tuple(shape)


def to_ours(tensor: np.ndarray, shape: tuple, layout: str) -> np.ndarray:
    """A Hugging Face tensor -> this model's layout of `shape`, C-contiguous (a new array,
    or `tensor` itself where the layout is the same and it is a writable array of its own)."""
    if layout == "in_heads":
        return np.ascontiguousarray(tensor.reshape(shape[1], shape[2], shape[0]).transpose(2, 0, 1))
    if layout == "heads_out":
        return np.ascontiguousarray(tensor.T).reshape(shape)
    if layout == "transpose":
        return np.ascontiguousarray(tensor.T)
    if tensor.flags.writeable and tensor.flags.c_contiguous:  # already the reader's own copy
        return tensor
    return np.array(tensor, copy=True)


def to_hf(param: np.ndarray, layout: str) -> np.ndarray:
    """This model's parameter -> the Hugging Face tensor (C-contiguous; inverse of to_ours)."""
    if layout == "in_heads":
        e, a, b = param.shape
        return np.ascontiguousarray(param.transpose(1, 2, 0)).reshape(a * b, e)
    if layout == "heads_out":
        a, b, e = param.shape
        return np.ascontiguousarray(param.reshape(a * b, e).T)
    if layout == "transpose":
        return np.ascontiguousarray(param.T)
    return np.array(param, order="C")  # (ascontiguousarray would make a scalar [1])

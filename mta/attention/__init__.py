"""Pure attention functions over arrays (no Flax, no config objects).

multi_token_attention is the entry point (impl: reference | dense | blockwise | auto);
reference.py holds the paper's equations in order and is the oracle of the other impls. The
other baselines are one module each with their own entry points: diff.py (DIFF), fox.py
(forgetting attention), stick_breaking.py, gate.py (gated attention) and canon.py (Canon layers).
"""

from mta.attention.blockwise import multi_token_attention_blockwise
from mta.attention.canon import canon_conv, canon_step, canon_window
from mta.attention.conv import conv3d_heads, key_query_conv, mix_heads
from mta.attention.core import causal_attention, tuned_vjp
from mta.attention.dense import attention_weights, multi_token_attention_dense
from mta.attention.diff import (
    diff_head_norm,
    diff_lambda,
    diff_lambda_init,
    differential_attention,
)
from mta.attention.fox import forgetting_attention, log_forget_gate
from mta.attention.gate import sigmoid_gate
from mta.attention.kernels import KernelSpec
from mta.attention.mta import IMPLS, choose_impl, multi_token_attention
from mta.attention.reference import multi_token_attention_reference
from mta.attention.stick_breaking import stick_breaking_attention, stick_breaking_weights

__all__ = [
    "IMPLS",
    "KernelSpec",
    "attention_weights",
    "canon_conv",
    "canon_step",
    "canon_window",
    "causal_attention",
    "choose_impl",
    "conv3d_heads",
    "diff_head_norm",
    "diff_lambda",
    "diff_lambda_init",
    "differential_attention",
    "forgetting_attention",
    "key_query_conv",
    "log_forget_gate",
    "mix_heads",
    "multi_token_attention",
    "multi_token_attention_blockwise",
    "multi_token_attention_dense",
    "multi_token_attention_reference",
    "sigmoid_gate",
    "stick_breaking_attention",
    "stick_breaking_weights",
    "tuned_vjp",
]

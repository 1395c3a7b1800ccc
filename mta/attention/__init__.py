"""Pure attention functions over arrays (no Flax, no config objects).

multi_token_attention is the entry point (impl: reference | dense | blockwise | auto);
reference.py holds the paper's equations in order and is the oracle of the other impls.
"""

from mta.attention.blockwise import multi_token_attention_blockwise
from mta.attention.conv import conv3d_heads, key_query_conv, mix_heads
from mta.attention.core import causal_attention, tuned_vjp
from mta.attention.dense import attention_weights, multi_token_attention_dense
from mta.attention.diff import (
    diff_head_norm,
    diff_lambda,
    diff_lambda_init,
    differential_attention,
)
from mta.attention.kernels import KernelSpec
from mta.attention.mta import IMPLS, choose_impl, multi_token_attention
from mta.attention.reference import multi_token_attention_reference

__all__ = [
    "IMPLS",
    "KernelSpec",
    "attention_weights",
    "causal_attention",
    "choose_impl",
    "conv3d_heads",
    "diff_head_norm",
    "diff_lambda",
    "diff_lambda_init",
    "differential_attention",
    "key_query_conv",
    "mix_heads",
    "multi_token_attention",
    "multi_token_attention_blockwise",
    "multi_token_attention_dense",
    "multi_token_attention_reference",
    "tuned_vjp",
]

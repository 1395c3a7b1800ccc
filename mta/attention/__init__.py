"""Pure attention functions over arrays (no Flax, no config objects)."""

from mta.attention.blockwise import multi_token_attention_blockwise
from mta.attention.conv import conv3d_heads, key_query_conv, mix_heads
from mta.attention.core import causal_attention
from mta.attention.diff import (
    diff_head_norm,
    diff_lambda,
    diff_lambda_init,
    differential_attention,
)
from mta.attention.mta import attention_weights, multi_token_attention

__all__ = [
    "attention_weights",
    "causal_attention",
    "conv3d_heads",
    "diff_head_norm",
    "diff_lambda",
    "diff_lambda_init",
    "differential_attention",
    "key_query_conv",
    "mix_heads",
    "multi_token_attention",
    "multi_token_attention_blockwise",
]

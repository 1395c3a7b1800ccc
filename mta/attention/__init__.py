"""Pure attention functions over arrays (no Flax, no config objects)."""

from mta.attention.core import causal_attention
from mta.attention.mta import multi_token_attention

__all__ = ["causal_attention", "multi_token_attention"]

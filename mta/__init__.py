"""mta: Multi-Token Attention and other attention variants in JAX/Flax NNX."""

"""Pre-softmax logit tiles blockwise MTA computes in one forward and one backward, counted by
blockwise_tiles.TILE_COUNTER, for the release setting (6x11 key-query conv before and after the
softmax, linear pre and grouped post head mixing), B=1, H=8, D=64, the backend's block sizes:

    python scripts/blockwise_tile_counts.py 2048 16384 32768

The numbers go in docs/mta.md ("Tile computations").
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from mta.attention import blockwise_tiles
from mta.attention.blockwise import multi_token_attention_blockwise
from mta.bench.attention import release_kernels


def count(T: int, heads: int = 8, dim: int = 64) -> dict:
    """{"forward", "forward_wide", "backward", "backward_wide"}: tile computations at length T."""
    counter = blockwise_tiles.TILE_COUNTER
    counter.update(enabled=True, count=0, wide=0)
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(1, T, heads, dim)), jnp.float32) for _ in "qkv")
    kernels = {name: jnp.asarray(x) for name, x in release_kernels(heads).items()}

    def attend(q, k, v, kernels):
        return multi_token_attention_blockwise(q, k, v, **kernels, tuned=True)

    out, vjp = jax.vjp(attend, q, k, v, kernels)
    jax.block_until_ready(out)
    jax.effects_barrier()
    forward, forward_wide = counter["count"], counter["wide"]
    jax.block_until_ready(vjp(out))
    jax.effects_barrier()
    return {
        "forward": forward,
        "forward_wide": forward_wide,
        "backward": counter["count"] - forward,
        "backward_wide": counter["wide"] - forward_wide,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("T", type=int, nargs="+", help="sequence lengths")
    for T in parser.parse_args().T:
        print(f"T={T}", count(T), flush=True)


if __name__ == "__main__":
    main()

"""Query chunks: O(T) memory for variants whose output rows read only their own query.

A row of forgetting or stick-breaking attention needs its query (and per-query values such as
the cumulative forget gate) and every key; nothing ties it to other rows. So the rows are
computed `chunk` queries at a time under `jax.checkpoint`: the forward keeps one [B, H, C, S]
map at a time and the backward recomputes each chunk's map from q, k, v. Peak memory is
O(C S) per layer instead of O(T S). This is the simple form (every chunk reads all S keys);
a key-tiled kernel with online normalisation would also bound the work per tile.
"""

import jax
import jax.numpy as jnp
from einops import rearrange

CHUNK = 128  # queries per chunk


def over_query_chunks(rows, chunk: int, *per_query):
    """rows(positions_C, *cut) -> [B, C, ...] for the queries at positions_C (0-based query
    indices), where `cut` is each array of per_query ([B, T, ...]) cut to those queries.
    -> [B, T, ...]. T is padded up to a multiple of chunk; padded queries are computed and
    dropped (callers must keep them finite: a row with no allowed key must give zeros)."""
    num_t = per_query[0].shape[1]
    num_chunks = -(-num_t // chunk)
    pad = num_chunks * chunk - num_t

    def cut(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return rearrange(x, "b (n c) ... -> n b c ...", c=chunk)

    positions_NC = jnp.arange(num_chunks * chunk).reshape(num_chunks, chunk)
    body = jax.checkpoint(lambda args: rows(*args))
    out = jax.lax.map(body, (positions_NC, *(cut(x) for x in per_query)))
    return rearrange(out, "n b c ... -> b (n c) ...")[:, :num_t]


def rows_mask(query_pos_C, num_keys: int, offset: int, seg_BC=None, key_seg_BS=None):
    """(allowed [B or 1, 1, C, S]: key j <= query position, same document; own [1, 1, C, S]:
    key j is the query's own position). Query index i sits at key position i + offset."""
    key_pos_S = jnp.arange(num_keys)
    query_pos_C1 = (query_pos_C + offset)[:, None]
    allowed = (key_pos_S <= query_pos_C1)[None, None]
    own = (key_pos_S == query_pos_C1)[None, None]
    if seg_BC is not None:
        allowed = allowed & (seg_BC[:, :, None] == key_seg_BS[:, None, :])[:, None]
    return allowed, own


def use_chunks(impl: str, q_shape, k_shape) -> bool:
    """Whether `impl` (mta.attention.IMPLS) means the chunked path for a variant that has no
    separate reference and dense forms: blockwise and pallas (the O(T) paths) do, auto when
    mta's choose_impl would pick blockwise (the dense maps would not fit), reference and dense
    do not."""
    if impl == "auto":
        from mta.attention.kernels import KernelSpec
        from mta.attention.mta import choose_impl

        impl = choose_impl(KernelSpec.of(q_shape[2]), q_shape, k_shape)
    return impl in ("blockwise", "pallas")

"""Cached, incremental decoding: one new query row per step instead of the full T x T maps.

A prompt pass (`prefill`) runs the dense path and fills a cache; each `attend_step` then computes
only the new token's logit row against the cached keys (its own key and value join beside them),
and `commit` writes the token into the cache; `decode_step` is the two in one. Jit them as two
calls, `commit` with the cache donated: XLA:CPU copies a donated buffer that one program both
reads and updates (16k positions, H=8, D=64: 40 ms per step for the copies against 1 ms for
the products), while a program that only writes updates it in place.

Every variant costs O(S) per token and layer, MTA included: its convolutions along queries read
only the last c_q - 1 rows, which the cache keeps. `recompute_step` is the reference release's
way (the full T x T maps every token), kept for benchmarks.

Cache (`LayerCache`, a pytree; one per layer; S = S_max positions, rows oldest first):

    k, v        [B, K, S, D]        keys and values of the kv heads, heads first so a step's two
                                    products read them in place; positions >= lengths are 0
    lengths     [B] int32           tokens so far per row = position of the next token
    logit_rows  [B, H, c_q - 1, S]  the last c_q - 1 zero-masked logit rows (pre-softmax conv input)
    prob_rows   [B, H, c_q' - 1, S] the last c_q' - 1 probability rows (post-softmax conv input)
    key_bias    [B, H, S] or None   a per-key value of the variant (FoX: cumulative log forget
                                    gate c_j), written at lengths like k and v
    windows     tuple of [B, W, E]  the block's Canon-layer windows (last W inputs, oldest
                                    first), replaced whole by each step

A window is a ring: the row of position p sits in slot p mod (c_q - 1), so a step writes one row
(in place, in `commit`) instead of shifting the window; the step turns the kernel's query taps
to match the slots instead of reordering the rows. A window has 0 rows when its conv is absent
(c_q = 1 counts as absent). A row of a position before 0 is all zeros, which is what the dense
conv's padding reads.

Batches: prompts are right-padded; row b holds its tokens at positions 0..lengths[b]-1 and
writes its next token at lengths[b]. Row b reads nothing at or beyond its own length (entries
after the prompt are ignored), so batched rows equal the same prompts run one by one.

Why the windows suffice (new query at position p, r = (c_k - 1) // 2):
- pre conv: out[p, j] = sum_{a,b} theta[a, b] X[p - (c_q-1) + a, j - r + b] with X = mask_0(logits)
  reads rows p-c_q+1..p only. For j <= p it may read keys j' = j - r + b > i' of an older row i';
  X is 0 there, and the stored rows are zero-masked over their whole width, so they read 0 too.
- post conv: reads probability rows p-c_q'+1..p at keys up to j + r'; a past row i' is 0 for
  keys > i' (the softmax's mask), and the stored rows keep those zeros. The final mask_0 drops
  j > p, so keys beyond p never matter. Head mixing acts per (query, key): per row.
Hence prefill + steps reproduce the dense output at every position (up to float rounding).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange

from mta.attention.conv import grouped_conv_valid, mix_heads
from mta.attention.core import check_heads, masked_softmax
from mta.attention.diff import differential_attention
from mta.attention.kernels import KernelSpec
from mta.attention.mta import multi_token_attention


class LayerCache(NamedTuple):
    """The decoding state of one attention layer (layout in the module docstring)."""

    k: jax.Array  # [B, K, S, D]
    v: jax.Array  # [B, K, S, D]
    lengths: jax.Array  # [B] int32
    logit_rows: jax.Array  # [B, H, c_q - 1, S]
    prob_rows: jax.Array  # [B, H, c_q' - 1, S]
    key_bias: jax.Array | None = None  # [B, H, S] (FoX), else None
    windows: tuple = ()  # Canon windows [B, K - 1, E] of the block, if any


def prefill(
    q,
    k,
    v,
    lengths,
    max_len: int,
    kq_pre=None,
    head_pre=None,
    kq_post=None,
    head_post=None,
    impl: str = "auto",
):
    """Prompt pass: multi_token_attention (with `impl`) plus the filled cache.

    q [B, T, H, D], k/v [B, T, K, D]: right-padded prompts, row b's at positions 0..lengths[b]-1
    (lengths [B] ints, 1 <= lengths <= T). Kernels as in multi_token_attention.
    Returns (out [B, T, H, D] (rows past a prompt's length are meaningless), LayerCache with
    max_len >= T positions).
    """
    spec = KernelSpec.of(q.shape[2], kq_pre, head_pre, kq_post, head_post)
    out_BTHD = multi_token_attention(q, k, v, kq_pre, head_pre, kq_post, head_post, impl=impl)
    lengths_B = jnp.asarray(lengths, jnp.int32)
    k_BKSD, v_BKSD = _pad_to_cache(k, v, lengths_B, max_len)
    n_pre, n_post = spec.pre_taps[0] - 1, spec.post_taps[0] - 1
    # The last n_pre + n_post zero-masked logit rows: the post window's rows and, before them,
    # the pre-conv rows they read. Positions before 0 give all-zero rows.
    positions_BN = lengths_B[:, None] - (n_pre + n_post) + jnp.arange(n_pre + n_post)
    index_BN11 = jnp.clip(positions_BN, 0, q.shape[1] - 1)[:, :, None, None]
    q_BNHD = jnp.take_along_axis(q, index_BN11, axis=1)
    mask_B1NS = _causal_rows_mask(positions_BN, max_len)
    x_BHNS = jnp.where(mask_B1NS, _logits(q_BNHD, k_BKSD), 0.0)
    logit_rows = _to_ring(x_BHNS[:, :, n_post:], lengths_B)
    if n_post:
        logits_BHNS = _pre_softmax(x_BHNS, kq_pre, head_pre)  # n_pre + n_post -> n_post rows
        prob_rows = _to_ring(masked_softmax(logits_BHNS, mask_B1NS[:, :, n_pre:]), lengths_B)
    else:
        prob_rows = jnp.zeros(x_BHNS.shape[:2] + (0, max_len), jnp.float32)
    return out_BTHD, LayerCache(k_BKSD, v_BKSD, lengths_B, logit_rows, prob_rows)


class CacheUpdate(NamedTuple):
    """What one decoded token adds to a LayerCache (written by `commit`)."""

    k: jax.Array  # [B, 1, K, D] the token's key, written at position lengths
    v: jax.Array  # [B, 1, K, D] its value
    logit_row: jax.Array  # [B, H, 1, S] its zero-masked logit row (0 rows without a pre conv)
    prob_row: jax.Array  # [B, H, 1, S] its probability row (0 rows without a post conv)
    key_bias: jax.Array | None = None  # [B, H, 1] its per-key value (FoX), else None
    windows: tuple = ()  # the block's next Canon windows, if any


def attend_step(
    q_B1HD,
    k_B1KD,
    v_B1KD,
    cache: LayerCache,
    kq_pre=None,
    head_pre=None,
    kq_post=None,
    head_post=None,
):
    """One new token per row at position cache.lengths, reading the cache only:
    -> (out [B, 1, H, D], CacheUpdate for `commit`).

    q [B, 1, H, D], k/v [B, 1, K, D], already position-encoded. The caller keeps
    lengths < S_max. Steps on the new row only: logits, mask_0, pre conv with the stored rows,
    head mixing, mask_-inf + softmax, post conv with the stored probability rows, mixing,
    mask_0, times V. The new key and value enter at slot lengths beside the cached ones.
    """
    spec = KernelSpec.of(q_B1HD.shape[2], kq_pre, head_pre, kq_post, head_post)
    _check_windows(cache, spec.pre_taps[0], spec.post_taps[0])
    mask_B11S, new_B11S = _row_masks(cache)
    x_BH1S = jnp.where(mask_B11S, _new_row_logits(q_B1HD, k_B1KD, cache, new_B11S), 0.0)
    logits_BH1S = _pre_softmax_step(x_BH1S, cache.logit_rows, cache.lengths, kq_pre, head_pre)
    probs_BH1S = masked_softmax(logits_BH1S, mask_B11S)
    weights_BH1S = _post_softmax_step(
        probs_BH1S, cache.prob_rows, cache.lengths, kq_post, head_post
    )
    if spec.post:  # mask_0 after the post conv and mixing
        weights_BH1S = jnp.where(mask_B11S, weights_BH1S, 0.0)
    out_B1HD = _new_row_values(weights_BH1S, v_B1KD, cache, new_B11S)
    logit_row = x_BH1S[:, :, : min(1, cache.logit_rows.shape[2])]  # 0 rows if no window
    prob_row = probs_BH1S[:, :, : min(1, cache.prob_rows.shape[2])]
    return out_B1HD, CacheUpdate(k_B1KD, v_B1KD, logit_row, prob_row)


def commit(cache: LayerCache, update: CacheUpdate) -> LayerCache:
    """Writes a step's key/value at each row's position and advances lengths by one.
    Run it as its own jitted call with the cache donated: the writes are then in place."""
    rows_B = jnp.arange(cache.k.shape[0])

    def write(buf_BKSD, new_B1KD):
        new_BKD = new_B1KD[:, 0].astype(buf_BKSD.dtype)
        return buf_BKSD.at[rows_B, :, cache.lengths].set(new_BKD, mode="promise_in_bounds")

    def write_row(ring_BHNS, row_BH1S):  # into slot lengths mod N (nothing when N = 0)
        if ring_BHNS.shape[2] == 0:
            return ring_BHNS
        slot_B = cache.lengths % ring_BHNS.shape[2]
        return ring_BHNS.at[rows_B, :, slot_B].set(row_BH1S[:, :, 0], mode="promise_in_bounds")

    key_bias = cache.key_bias
    if key_bias is not None:
        new_BH = update.key_bias[:, :, 0].astype(key_bias.dtype)
        key_bias = key_bias.at[rows_B, :, cache.lengths].set(new_BH, mode="promise_in_bounds")
    return LayerCache(
        write(cache.k, update.k),
        write(cache.v, update.v),
        cache.lengths + 1,
        write_row(cache.logit_rows, update.logit_row),
        write_row(cache.prob_rows, update.prob_row),
        key_bias,
        update.windows or cache.windows,
    )


def decode_step(q_B1HD, k_B1KD, v_B1KD, cache: LayerCache, **kernels):
    """attend_step then commit: -> (out [B, 1, H, D], the cache one token longer)."""
    out_B1HD, update = attend_step(q_B1HD, k_B1KD, v_B1KD, cache, **kernels)
    return out_B1HD, commit(cache, update)


def diff_prefill(q, k, v, lam, lengths, max_len: int):
    """Prompt pass of differential attention: q [B,T,2H',D], k [B,T,2K',D], v [B,T,K',2D],
    lam scalar or [H'], right-padded prompts of `lengths` [B] -> (out [B,T,H',2D], LayerCache)."""
    out_BTHD = differential_attention(q, k, v, lam)
    lengths_B = jnp.asarray(lengths, jnp.int32)
    k_BKSD, v_BKSD = _pad_to_cache(k, v, lengths_B, max_len)
    no_rows = jnp.zeros((q.shape[0], q.shape[2] // 2, 0, max_len), jnp.float32)
    return out_BTHD, LayerCache(k_BKSD, v_BKSD, lengths_B, no_rows, no_rows)


def diff_attend_step(q_B1HD, k_B1KD, v_B1KD, cache: LayerCache, lam):
    """One differential-attention token per row, reading the cache only: q [B,1,2H',D],
    k [B,1,2K',D], v [B,1,K',2D] -> (out [B, 1, H', 2D], CacheUpdate). (p1 - lam p2) @ v."""
    mask_B11S, new_B11S = _row_masks(cache)
    q1_B1HD, q2_B1HD = rearrange(q_B1HD, "b t (h two) d -> two b t h d", two=2)
    k1_B1KD, k2_B1KD = rearrange(k_B1KD, "b t (k two) d -> two b t k d", two=2)
    k1_BKSD, k2_BKSD = rearrange(cache.k, "b (k two) s d -> two b k s d", two=2)
    probs = [
        masked_softmax(_new_row_logits(q, k, cache._replace(k=k_cache), new_B11S), mask_B11S)
        for q, k, k_cache in ((q1_B1HD, k1_B1KD, k1_BKSD), (q2_B1HD, k2_B1KD, k2_BKSD))
    ]
    lam_1H11 = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (q1_B1HD.shape[2],))
    weights_BH1S = probs[0] - lam_1H11[:, None, None] * probs[1]
    out_B1HD = _new_row_values(weights_BH1S, v_B1KD, cache, new_B11S)
    return out_B1HD, CacheUpdate(k_B1KD, v_B1KD, cache.logit_rows, cache.prob_rows)


def diff_decode_step(q_B1HD, k_B1KD, v_B1KD, cache: LayerCache, lam):
    """diff_attend_step then commit: -> (out [B, 1, H', 2D], the cache one token longer)."""
    out_B1HD, update = diff_attend_step(q_B1HD, k_B1KD, v_B1KD, cache, lam)
    return out_B1HD, commit(cache, update)


def recompute_step(
    q, k, v, lengths, kq_pre=None, head_pre=None, kq_post=None, head_post=None, impl="auto"
) -> jax.Array:
    """The reference release's decoding, for benchmarks: the full dense T x T attention over
    the whole sequence for every new token. q [B, T, H, D], k/v [B, T, K, D] right-padded,
    lengths [B] -> the output at each row's last position lengths - 1: [B, 1, H, D]."""
    out_BTHD = multi_token_attention(q, k, v, kq_pre, head_pre, kq_post, head_post, impl=impl)
    last_B111 = (jnp.asarray(lengths) - 1)[:, None, None, None]
    return jnp.take_along_axis(out_BTHD, last_B111, axis=1)


def _pre_softmax(x_BHRS, kq_pre, head_pre):
    """Pre conv (c_q taps: R rows -> the last R - c_q + 1, each reading its c_q - 1 predecessors)
    and head mixing (per row) on zero-masked logit rows."""
    if kq_pre is not None:
        x_BHRS = _conv_rows(x_BHRS, rearrange(kq_pre, "h q k -> h 1 q k"), x_BHRS.shape[1])
    if head_pre is not None and jnp.ndim(head_pre) == 5:  # 3-D conv: groups of c_h heads
        kernel_OIQK = rearrange(head_pre, "n i o q k -> (n o) i q k")
        x_BHRS = _conv_rows(x_BHRS, kernel_OIQK, head_pre.shape[0])
    elif head_pre is not None:
        x_BHRS = mix_heads(x_BHRS, head_pre)
    return x_BHRS


def _pre_softmax_step(x_BH1S, ring_BHNS, lengths_B, kq_pre, head_pre):
    """_pre_softmax for the new row, its predecessors read from the ring window."""
    if head_pre is not None and jnp.ndim(head_pre) == 5:  # rare: rows in order, then as above
        rows_BHQS = jnp.concatenate([_chronological(ring_BHNS, lengths_B), x_BH1S], axis=2)
        return _pre_softmax(rows_BHQS, None, head_pre)
    if kq_pre is not None:
        x_BH1S = _conv_step(x_BH1S, ring_BHNS, lengths_B, kq_pre)
    if head_pre is not None:
        x_BH1S = mix_heads(x_BH1S, head_pre)
    return x_BH1S


def _post_softmax_step(probs_BH1S, ring_BHNS, lengths_B, kq_post, head_post):
    """Post conv (predecessors from the ring window) and head mixing for the new row."""
    if kq_post is not None:
        probs_BH1S = _conv_step(probs_BH1S, ring_BHNS, lengths_B, kq_post)
    if head_post is not None:
        probs_BH1S = mix_heads(probs_BH1S, head_post)
    return probs_BH1S


def _conv_step(new_BH1S, ring_BHNS, lengths_B, kernel_HQK):
    """The MTA conv's output row for the new query: its c_q - 1 predecessors from the ring
    window (N = c_q - 1 slots, position p in slot p mod N), itself last -> [B, H, 1, S].
    The predecessor at position lengths - N + a sits in slot (lengths + a) mod N, so slot s
    takes query tap a = (s - lengths) mod N."""
    num_slots = ring_BHNS.shape[2]
    kernel_HQK = kernel_HQK.astype(jnp.float32)
    tap_BN = (jnp.arange(num_slots)[None, :] - lengths_B[:, None]) % num_slots
    slot_kernel_BHNK = rearrange(kernel_HQK[:, tap_BN], "h b n k -> b h n k")
    out_BHS = _taps_along_keys(new_BH1S[:, :, 0], kernel_HQK[None, :, num_slots])
    for slot in range(num_slots):
        out_BHS = out_BHS + _taps_along_keys(ring_BHNS[:, :, slot], slot_kernel_BHNK[:, :, slot])
    return out_BHS[:, :, None]


def _taps_along_keys(row_BHS, kernel_BHK):
    """One row's centred key-axis cross-correlation: [B, H, S], [B or 1, H, c_k] -> [B, H, S]."""
    c_k, num_keys = kernel_BHK.shape[-1], row_BHS.shape[-1]
    r = (c_k - 1) // 2
    row_BHS = jnp.pad(row_BHS.astype(jnp.float32), ((0, 0), (0, 0), (r, r)))
    taps = [kernel_BHK[..., c, None] * row_BHS[..., c : c + num_keys] for c in range(c_k)]
    return sum(taps)


def _to_ring(rows_BHNS, lengths_B):
    """Window rows oldest first (positions lengths - N .. lengths - 1) -> ring order (slot s
    holds the position congruent to s mod N)."""
    num_slots = rows_BHNS.shape[2]
    if num_slots == 0:
        return rows_BHNS
    index_BN = (jnp.arange(num_slots)[None, :] - lengths_B[:, None]) % num_slots
    return jnp.take_along_axis(rows_BHNS, index_BN[:, None, :, None], axis=2)


def _chronological(ring_BHNS, lengths_B):
    """Inverse of _to_ring: ring window -> rows oldest first."""
    num_slots = ring_BHNS.shape[2]
    index_BN = (lengths_B[:, None] + jnp.arange(num_slots)[None, :]) % num_slots
    return jnp.take_along_axis(ring_BHNS, index_BN[:, None, :, None], axis=2)


def _conv_rows(x_BCRS, kernel_OIQK, groups: int):
    """The MTA cross-correlation without query padding: [B, C, R, S] -> [B, O, R - c_q + 1, S].
    Output row t reads input rows t..t + c_q - 1 (the last is its own query); keys are centred."""
    r = (kernel_OIQK.shape[3] - 1) // 2
    x_BCRS = jnp.pad(x_BCRS, ((0, 0), (0, 0), (0, 0), (r, r)))
    return grouped_conv_valid(x_BCRS, kernel_OIQK, groups)


def _causal_rows_mask(positions_BN, num_keys: int):
    """Query rows at absolute positions [B, N] -> allowed keys [B, 1, N, S] (key j <= position)."""
    return (jnp.arange(num_keys) <= positions_BN[:, :, None])[:, None]


def _row_masks(cache: LayerCache):
    """Keys the new row may read (j <= lengths) and its own key's slot (j == lengths): [B,1,1,S]."""
    positions_S, lengths_B111 = jnp.arange(cache.k.shape[2]), cache.lengths[:, None, None, None]
    return positions_S <= lengths_B111, positions_S == lengths_B111


def _new_row_logits(q_B1HD, k_B1KD, cache: LayerCache, new_B11S):
    """The new query's logits [B, H, 1, S] against the cached keys and, at slot lengths, its own."""
    own_BH11 = _logits(q_B1HD, rearrange(k_B1KD, "b 1 k d -> b k 1 d"))
    return jnp.where(new_B11S, own_BH11, _logits(q_B1HD, cache.k))


def _new_row_values(weights_BH1S, v_B1KD, cache: LayerCache, new_B11S):
    """weights [B, H, 1, S] over the cached values and, at slot lengths, the new value
    -> [B, 1, H, D]."""
    cached_B1HD = _weight_values(jnp.where(new_B11S, 0.0, weights_BH1S), cache.v)
    own_BH11 = jnp.sum(jnp.where(new_B11S, weights_BH1S, 0.0), axis=-1, keepdims=True)
    return cached_B1HD + _weight_values(own_BH11, rearrange(v_B1KD, "b 1 k d -> b k 1 d"))


def _logits(q_BNHD, k_BKSD):
    """attention_logits for the cache's layout: q [B, N, H, D], k [B, K, S, D] -> [B, H, N, S]."""
    group = check_heads(q_BNHD.shape[2], k_BKSD.shape[1])
    q_BKDM = rearrange(q_BNHD, "b n (k g) d -> b k d (g n)", g=group)
    # keys on the left: XLA:CPU then multiplies the cache as stored (q on the left made it
    # transpose the whole [S, D] cache every step)
    logits_BKSM = jnp.einsum("bksd,bkdm->bksm", k_BKSD, q_BKDM, preferred_element_type=jnp.float32)
    logits_BHNS = rearrange(logits_BKSM, "b k s (g n) -> b (k g) n s", g=group)
    return logits_BHNS * q_BNHD.shape[-1] ** -0.5


def _weight_values(weights_BHNS, v_BKSD):
    """weight_values for the cache's layout: weights [B, H, N, S], v [B, K, S, D]
    -> [B, N, H, D] (v's dtype)."""
    group = check_heads(weights_BHNS.shape[1], v_BKSD.shape[1])
    weights_BKGNS = rearrange(weights_BHNS, "b (k g) n s -> b k g n s", g=group)
    out_BKGND = jnp.einsum(
        "bkgns,bksd->bkgnd",
        weights_BKGNS.astype(v_BKSD.dtype),
        v_BKSD,
        preferred_element_type=jnp.float32,
    )
    return rearrange(out_BKGND, "b k g n d -> b n (k g) d").astype(v_BKSD.dtype)


def _pad_to_cache(k_BTKD, v_BTKD, lengths_B, max_len: int):
    """Prompt keys/values [B, T, K, D] -> [B, K, max_len, D], zero at positions >= lengths."""
    num_tokens = k_BTKD.shape[1]
    if max_len < num_tokens:
        raise ValueError(f"max_len ({max_len}) must be at least the prompt length ({num_tokens})")
    keep_BT11 = (jnp.arange(num_tokens) < lengths_B[:, None])[:, :, None, None]
    pad = ((0, 0), (0, 0), (0, max_len - num_tokens), (0, 0))
    return (
        jnp.pad(rearrange(jnp.where(keep_BT11, x, 0), "b t k d -> b k t d"), pad)
        for x in (k_BTKD, v_BTKD)
    )


def _check_windows(cache: LayerCache, c_pre: int, c_post: int) -> None:
    """Raises ValueError unless the cache's windows fit the kernels (c - 1 rows each)."""
    got = (cache.logit_rows.shape[2], cache.prob_rows.shape[2])
    if got != (c_pre - 1, c_post - 1):
        raise ValueError(
            f"cache windows hold {got} (logit, probability) rows but the kernels need "
            f"({c_pre - 1}, {c_post - 1}); build the cache with prefill using the same kernels"
        )

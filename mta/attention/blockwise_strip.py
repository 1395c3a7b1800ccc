"""Row strips of blockwise MTA (blockwise.py): the pre-softmax logits of one query block and
the c_q' - 1 rows above it, for every key block up to the causal limit, kept in a
[B, H, block_q + c_q' - 1, S + 2 r'] buffer so the softmax statistics and the post-softmax
convolution read them instead of recomputing them."""

import jax.numpy as jnp
from jax import lax

from mta.attention.blockwise_plan import Blocks, Plan, allowed_pairs, dynamic_slice
from mta.attention.blockwise_tiles import pre_tile, probabilities


def empty_strip(plan: Plan, batch: int, heads: int, rows: int | None = None):
    """A zero strip buffer [B, H, rows (default strip_rows), strip_cols] float32."""
    rows = plan.strip_rows if rows is None else rows
    return jnp.zeros((batch, heads, rows, plan.strip_cols), jnp.float32)


def logit_strip(plan: Plan, kernels, blocks: Blocks, qb, strip, with_stats: bool, unmixed=None):
    """Writes query block qb's strip: one pre tile per key block (kb < key_blocks(qb)), key j
    at column j + r'. Columns past the causal limit keep stale (finite) values: every reader
    masks them. unmixed: None, or a strip that gets the tiles before the head mixing.
    -> (strip, (m, l) or None, unmixed): the row max m and sum l of exp(x - m) of the strip's
    rows [B, H, strip_rows] (m = 0, l = 1 for rows without an allowed key) with_stats."""
    halo = plan.post_cq - 1
    batch, heads = strip.shape[:2]

    def step(kb, carry):
        strip, m_BHR, l_BHR, unmixed = carry
        q_t, k_t, segs, row0, col0 = blocks.pre_args(qb, kb, halo)
        y_BHRC, allowed, f_BHRC = pre_tile(plan, kernels, q_t, k_t, row0, col0, *segs)
        col = kb * plan.block_k + plan.post_r
        strip = lax.dynamic_update_slice_in_dim(strip, y_BHRC, col, 3)
        if unmixed is not None:
            unmixed = lax.dynamic_update_slice_in_dim(unmixed, f_BHRC, col, 3)
        if with_stats:  # online max / sum over key blocks
            x_BHRC = jnp.where(allowed, y_BHRC, -jnp.inf)
            m_new = jnp.maximum(m_BHR, x_BHRC.max(axis=-1))
            shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            l_BHR = l_BHR * jnp.exp(m_BHR - shift) + jnp.exp(x_BHRC - shift[..., None]).sum(-1)
            m_BHR = m_new
        return strip, m_BHR, l_BHR, unmixed

    init = (
        strip,
        jnp.full((batch, heads, plan.strip_rows), -jnp.inf),
        jnp.zeros((batch, heads, plan.strip_rows)),
        unmixed,
    )
    strip, m_BHR, l_BHR, unmixed = lax.fori_loop(0, plan.key_blocks(qb), step, init)
    if not with_stats:
        return strip, None, unmixed
    stats = (jnp.where(jnp.isfinite(m_BHR), m_BHR, 0.0), jnp.where(l_BHR > 0, l_BHR, 1.0))
    return strip, stats, unmixed


def strip_probs(plan: Plan, blocks: Blocks, qb, kb, strip, m_BHR, l_BHR):
    """Probabilities of output tile (qb, kb) with its post halo, read from the strip:
    p [B, H, strip_rows, C], C = block_k + 2 r' (keys from j0 - r'); allowed_out
    [B|1, 1, block_q, C] (output column j is key j0 + j, False from block_k on); the ids of the
    strip rows (or None) and v [B, C, K, D] (keys j0 ..)."""
    rows_R, seg_rows = blocks.strip_ids(qb)
    cols_C, seg_cols, v_t = blocks.post_cols(kb)
    allowed = allowed_pairs(plan, rows_R, cols_C, seg_rows, seg_cols)
    y_BHRC = dynamic_slice(strip, kb * plan.block_k, cols_C.shape[0], 3)
    p_BHRC = probabilities(y_BHRC, allowed, m_BHR, l_BHR)
    r = plan.post_r
    out_cols = cols_C + r  # output column j reads input columns j .. j + 2 r'
    in_block = jnp.arange(cols_C.shape[0]) < plan.block_k
    seg_out = None if seg_cols is None else jnp.roll(seg_cols, -r, axis=1)
    allowed_out = allowed_pairs(
        plan, rows_R[plan.post_cq - 1 :], out_cols, _own(seg_rows, plan), seg_out
    )
    return p_BHRC, allowed_out & in_block, seg_rows, v_t


def _own(seg_rows, plan: Plan):
    return None if seg_rows is None else seg_rows[:, plan.post_cq - 1 :]

"""The Triton-shaped kernel for GPUs (pallas_gpu.py): in Pallas interpret mode against the reference
(forward, and gradients through its custom VJP), causal and document-local, bfloat16; exported for
CUDA from this CPU machine, a Triton module that passes MLIR verification.

The combos cover pre conv only, pre mixing linear and grouped, mixing without conv, plain
attention; MHA / GQA / MQA; S > T; block sizes that do not divide T; documents whose boundaries
fall inside blocks; and long enough rows that most tiles take the clean (conv-on-q) path, so a
fault in either path shows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mta.attention import pallas_gpu
from mta.attention.reference import multi_token_attention_reference

from .test_blockwise import Combo, _inputs

RTOL, ATOL = 2e-5, 2e-5

COMBOS = [
    Combo("pre_mha", heads=2, kv_heads=2, pre=(3, 5), num_t=40, blocks=(16, 16), dim=8),
    Combo("pre_linear_gqa_docs", kv_heads=2, pre=(3, 5), head_pre="linear",
          docs=((20, 25), (7, 18, 20)), num_t=45, blocks=(16, 8), dim=8),
    Combo("pre_grouped_mqa_clean_tiles_docs", kv_heads=1, pre=(3, 5), head_pre=2,
          docs=((10, 54), (30, 34)), num_t=64, blocks=(8, 8), dim=8),
    Combo("pre_grouped_gqa_s_gt_t", kv_heads=2, pre=(3, 5), head_pre=2, num_t=20, num_s=44,
          blocks=(8, 8), dim=8),
    Combo("mixing_only_s_gt_t", kv_heads=2, head_pre="linear", num_t=20, num_s=44,
          blocks=(8, 16), dim=8),
    Combo("plain_mqa_docs", kv_heads=1, num_t=40, blocks=(16, 8), docs=((9, 31),), dim=8),
]  # fmt: skip


def _attend(combo, **kwargs):
    blocks = dict(block_q=combo.blocks[0], block_k=combo.blocks[1])
    return jax.jit(lambda *a, **k: pallas_gpu.attention(*a, **k, **blocks, interpret=True))


@pytest.mark.parametrize("combo", COMBOS, ids=str)
def test_gpu_kernel_equals_reference(combo):
    q, k, v, kernels, segment_ids, cotangent = _inputs(combo)
    args = {"q": q, "k": k, "v": v, **kernels}
    attend = _attend(combo)
    out, vjp = jax.vjp(lambda a: attend(**a, segment_ids=segment_ids), args)
    want, want_vjp = jax.vjp(
        lambda a: multi_token_attention_reference(**a, segment_ids=segment_ids), args
    )
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
    grads, want_grads = vjp(cotangent)[0], want_vjp(cotangent)[0]
    for name in args:
        np.testing.assert_allclose(grads[name], want_grads[name], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("combo", COMBOS[1:3], ids=str)
def test_no_output_depends_on_a_later_key_or_another_document(combo):
    """Changing q, k, v from position t0 on leaves every output before t0 bit-equal; changing
    a row's first document leaves the outputs of the rest of the row bit-equal."""
    q, k, v, kernels, segment_ids, _ = _inputs(combo)
    attend = _attend(combo)
    out = np.asarray(attend(q, k, v, **kernels, segment_ids=segment_ids))
    rng = np.random.default_rng(7)
    t0 = combo.num_t // 2
    moved = [x.copy() for x in (q, k, v)]
    for x in moved:
        x[:, t0:] += rng.normal(size=x[:, t0:].shape).astype(x.dtype)
    later = np.asarray(attend(*moved, **kernels, segment_ids=segment_ids))
    assert np.array_equal(later[:, :t0], out[:, :t0]) and not np.allclose(later, out)
    first = combo.docs[0][0]  # row 0: documents [0, first) and [first, ...)
    moved = [x.copy() for x in (q, k, v)]
    for x in moved:
        x[0, :first] += rng.normal(size=x[0, :first].shape).astype(x.dtype)
    other = np.asarray(attend(*moved, **kernels, segment_ids=segment_ids))
    assert np.array_equal(other[0, first:], out[0, first:])
    assert not np.allclose(other[0, :first], out[0, :first])


def test_bfloat16_inputs_accumulate_in_float32():
    combo = COMBOS[2]
    q, k, v, kernels, segment_ids, _ = _inputs(combo)
    low = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    out = _attend(combo)(*low, **kernels, segment_ids=segment_ids)
    want = multi_token_attention_reference(
        *[x.astype(jnp.float32) for x in low], **kernels, segment_ids=segment_ids
    )
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), want, rtol=3e-2, atol=3e-2)


def test_halo_wider_than_a_block_is_refused():
    q = jnp.zeros((1, 32, 2, 16))
    with pytest.raises(ValueError, match="c_q - 1 <= block_q"):
        pallas_gpu.attention(q, q, q, jnp.zeros((2, 6, 3)), block_q=4, block_k=16)


@pytest.mark.parametrize(
    "dtype,head_pre,segments,kv_heads",
    [
        (jnp.bfloat16, "grouped", True, 2),
        (jnp.float32, "linear", False, 4),
        (jnp.bfloat16, None, True, 1),
    ],
)
def test_lowers_to_a_verified_triton_module(monkeypatch, dtype, head_pre, segments, kv_heads):
    """The release setting's pre part (6 x 11 conv, grouped mixing, documents, bf16) and two
    more, lowered for CUDA here: the Triton module Pallas builds passes MLIR verification (the
    dialect's own checks, e.g. power-of-two tensor sizes). Compiling it to PTX needs a GPU."""
    from jax._src.pallas.triton import lowering  # the module Pallas hands to XLA's Triton call

    modules = []
    build = lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = build(*args, **kwargs)
        modules.append(result.module)
        return result

    monkeypatch.setattr(lowering, "lower_jaxpr_to_triton_module", capture)
    spec = jax.ShapeDtypeStruct
    heads, num_t = 4, 200
    q, kv = spec((1, num_t, heads, 64), dtype), spec((1, num_t, kv_heads, 64), dtype)
    mixing = {"grouped": spec((2, 2, 2), jnp.float32), "linear": spec((4, 4), jnp.float32)}
    args = (q, kv, kv, spec((heads, 6, 11), jnp.float32), mixing.get(head_pre))
    args += (spec((1, num_t), jnp.int32) if segments else None,)
    lowered = jax.jit(pallas_gpu.attention).trace(*args).lower(lowering_platforms=("cuda",))
    assert "xla.gpu.triton" in lowered.as_text()
    assert len(modules) == 1 and modules[0].operation.verify()

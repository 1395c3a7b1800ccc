"""The Triton-shaped kernels for GPUs (pallas_gpu.py, forward and backward): in Pallas interpret
mode against the reference (output and the gradients of q, k, v, kq_pre, head_pre), causal and
document-local through gradients, bfloat16; lowered for CUDA from this CPU machine, three Triton
modules that pass MLIR verification.

The combos cover pre conv only, pre mixing linear and grouped, mixing without conv, plain
attention; MHA / GQA / MQA; S > T; block sizes that do not divide T; documents whose boundaries
fall inside blocks; and long enough rows that most tiles take the clean (conv-on-q) path, so a
fault in either path shows.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mta.attention import pallas_gpu
from mta.attention.pallas_gpu_grid import lower_for_cuda
from mta.attention.reference import multi_token_attention_reference

from .test_blockwise import Combo, _inputs

RTOL, ATOL = 2e-5, 2e-5

COMBOS = [
    # c_q > c_k: clean tiles take the conv on q
    Combo("pre_mha_tall_conv", heads=2, kv_heads=2, pre=(4, 3), num_t=40, blocks=(16, 16), dim=8),
    Combo("pre_linear_gqa_docs", kv_heads=2, pre=(3, 5), head_pre="linear",
          docs=((20, 25), (7, 18, 20)), num_t=45, blocks=(16, 8), dim=8),
    Combo("pre_grouped_mqa_clean_tiles_docs", kv_heads=1, pre=(3, 5), head_pre=2,
          docs=((10, 54), (30, 34)), num_t=64, blocks=(8, 8), dim=8),
    Combo("pre_grouped_gqa_s_gt_t", kv_heads=2, pre=(3, 5), head_pre=2, num_t=20, num_s=44,
          blocks=(8, 8), dim=8),
    Combo("mixing_only_s_gt_t", kv_heads=2, head_pre="linear", num_t=20, num_s=44,
          blocks=(8, 16), dim=8),
    Combo("plain_mqa_docs", kv_heads=1, num_t=40, blocks=(16, 8), docs=((9, 31),), dim=8),
    # post parts: staged margins of 16, so blocks of at least 16
    Combo("both_linear_grouped_gqa_docs", kv_heads=2, pre=(3, 5), head_pre="linear", post=(3, 5),
          head_post=2, docs=((20, 25), (7, 18, 20)), num_t=45, blocks=(16, 16), dim=8),
    Combo("post_only_grouped_mqa", kv_heads=1, post=(2, 3), head_post=4, num_t=41,
          blocks=(16, 16), dim=8),
    Combo("pre_grouped_post_conv_s_gt_t", pre=(2, 3), head_pre=2, post=(3, 3),
          num_t=30, num_s=50, blocks=(16, 16), dim=8),
    Combo("post_conv_only_long_docs", heads=2, kv_heads=2, post=(3, 5), docs=((12, 52),),
          num_t=64, blocks=(16, 16), dim=8),
    # 16 heads in a program: the mixings' weight gradients as dots over the heads
    Combo("sixteen_heads_linear_grouped_gqa", heads=16, kv_heads=4, pre=(2, 3), head_pre="linear",
          post=(2, 3), head_post=4, num_t=24, blocks=(16, 16), dim=8),
]  # fmt: skip


@functools.cache
def _attend(combo):
    """The kernels jitted for one combo (cached: a test that reuses shapes skips compiling)."""
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


@pytest.mark.parametrize("combo", [COMBOS[2], COMBOS[6]], ids=str)
def test_causal_and_document_local_through_gradients(combo):
    """A cotangent only on the first half of the queries: no gradient reaches a later q, k, v.
    A cotangent only on each row's second document: none reaches q, k, v outside it."""
    q, k, v, kernels, segment_ids, cotangent = _inputs(combo)
    attend = _attend(combo)

    def grads(cotangent):
        args = {"q": q, "k": k, "v": v, **kernels}  # as in the test above: same compiled vjp
        _, vjp = jax.vjp(lambda a: attend(**a, segment_ids=segment_ids), args)
        grads = vjp(cotangent)[0]
        return [np.abs(np.asarray(grads[name])).sum(axis=(2, 3)) for name in ("q", "k", "v")]

    half = combo.num_t // 2
    early = cotangent.copy()
    early[:, half:] = 0.0
    for grad in grads(early):
        assert np.all(grad[:, half:] == 0.0) and np.all(grad[:, :half].max(axis=1) > 0)
    inside_BT = np.zeros(q.shape[:2], bool)
    for b, row in enumerate(combo.docs):
        inside_BT[b, row[0] : row[0] + row[1]] = True
    for grad in grads(np.where(inside_BT[:, :, None, None], cotangent, 0.0).astype(np.float32)):
        assert np.all(grad[~inside_BT] == 0.0)
        assert all(grad[b][inside_BT[b]].max() > 0.0 for b in range(len(grad)))


def test_bfloat16_inputs_accumulate_in_float32():
    """bfloat16 q, k, v: output and gradients within bfloat16 rounding of the float32 reference
    on the same (rounded) inputs, in bfloat16."""
    combo = COMBOS[8]  # pre and post conv, grouped mixing
    q, k, v, kernels, segment_ids, cotangent = _inputs(combo)
    low = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    attend = _attend(combo)

    def out_and_grads(attend, q, k, v):
        out, vjp = jax.vjp(
            lambda q, k, v: attend(q, k, v, **kernels, segment_ids=segment_ids), q, k, v
        )
        return out, vjp(jnp.asarray(cotangent, out.dtype))

    out, d_low = out_and_grads(attend, *low)
    want, d_high = out_and_grads(
        multi_token_attention_reference, *[x.astype(jnp.float32) for x in low]
    )
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), want, rtol=3e-2, atol=3e-2)
    for got, ref in zip(d_low, d_high, strict=True):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(got.astype(jnp.float32), ref, rtol=5e-2, atol=5e-2)


def test_halo_wider_than_a_block_is_refused():
    q = jnp.zeros((1, 32, 2, 16))
    with pytest.raises(ValueError, match="halo of at most one block"):
        pallas_gpu.attention(q, q, q, jnp.zeros((2, 6, 3)), block_q=4, block_k=16)
    with pytest.raises(ValueError, match="stage the post conv"):
        pallas_gpu.attention(q, q, q, kq_post=jnp.zeros((2, 3, 3)), block_q=8, block_k=16)


@pytest.mark.parametrize(
    "dtype,head_pre,segments,kv_heads",
    [
        (jnp.bfloat16, "grouped", True, 2),
        (jnp.float32, "linear", False, 4),
        (jnp.bfloat16, None, True, 1),
    ],
)
def test_lowers_to_a_verified_triton_module(dtype, head_pre, segments, kv_heads):
    """6 x 11 convolutions before and after the softmax with three mixing / document / kv-head
    settings, forward and backward lowered for CUDA here: each of the six Triton modules
    Pallas builds passes MLIR verification (the dialect's own checks, e.g. power-of-two tensor
    sizes). Compiling them to PTX needs a GPU."""
    spec = jax.ShapeDtypeStruct
    heads, num_t = 4, 200
    q, kv = spec((1, num_t, heads, 64), dtype), spec((1, num_t, kv_heads, 64), dtype)
    mixing = {"grouped": spec((2, 2, 2), jnp.float32), "linear": spec((4, 4), jnp.float32)}
    taps = spec((heads, 6, 11), jnp.float32)
    weights = {"kq_pre": taps, "head_pre": mixing.get(head_pre), "kq_post": taps}
    weights["head_post"] = mixing.get(head_pre)
    segment_ids = spec((1, num_t), jnp.int32) if segments else None

    def loss(q, k, v, weights, segment_ids):
        out = pallas_gpu.attention(q, k, v, **weights, segment_ids=segment_ids)
        return out.astype(jnp.float32).sum()

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
    lowered, modules = lower_for_cuda(grad, q, kv, kv, weights, segment_ids)
    # forward: stats, post out; backward: delta, dq, dkv, post dv
    assert lowered.as_text().count("xla.gpu.triton") == 6
    assert len(modules) == 6 and all(m.operation.verify() for m in modules)


@pytest.mark.parametrize("post", [False, True])
def test_pre_tile_computations_per_tile_pair(monkeypatch, post):
    """The counts docs/mta.md states: per (query block, key block) pair and head, each kernel
    computes the pre-softmax logits of this many tiles (a step's calls of Tiles.logits weighted
    by their area; a staged post window is (64 + 16)(64 + 32) / 64^2 = 1.875 tiles)."""
    from jax.experimental import pallas as pl

    from mta.attention.pallas_gpu_tiles import Tiles

    tiles_by_kernel, running = {}, []
    build, logits = pl.pallas_call, Tiles.logits

    def named_call(body, *, name, **kwargs):
        kernel = build(body, name=name, **kwargs)
        return lambda *args: running.append(name) or kernel(*args)

    def counted_logits(self, h, i0, j0, n_r=None, n_c=None):
        area = (n_r or self.lay.block_q) * (n_c or self.lay.block_k)
        tiles_by_kernel[running[-1]] = tiles_by_kernel.get(running[-1], 0.0) + area / 64**2
        return logits(self, h, i0, j0, n_r, n_c)

    monkeypatch.setattr(pl, "pallas_call", named_call)
    monkeypatch.setattr(Tiles, "logits", counted_logits)
    spec = jax.ShapeDtypeStruct
    q, taps = spec((1, 256, 2, 64), jnp.float32), spec((2, 6, 11), jnp.float32)
    weights = {"kq_pre": taps, "kq_post": taps if post else None}

    def loss(q, k, v, weights):
        return pallas_gpu.attention(q, k, v, **weights).sum()

    jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(q, q, q, weights)
    per_pair = tiles_by_kernel  # a kernel's step body is traced once; a program holds 1 head
    if post:
        want = {"mta_gpu_forward": 1.0, "mta_gpu_post": 1.875, "mta_gpu_delta": 1.0}
        want |= {"mta_gpu_dq": 1.0, "mta_gpu_dkv": 1.0, "mta_gpu_post_dv": 1.875}
    else:
        want = {"mta_gpu_forward": 1.0, "mta_gpu_dq": 1.0, "mta_gpu_dkv": 1.0}
    assert per_pair == want

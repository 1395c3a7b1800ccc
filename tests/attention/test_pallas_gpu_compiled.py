"""The Triton-shaped kernels compiled for a real GPU (skipped on other backends): output and
every gradient equal to the reference impl, computed on the same GPU at float32 "highest"
matmul precision (TF32 would hide nothing the tolerances could see), and bfloat16 within
bfloat16 rounding. test_pallas_gpu.py checks the same kernels in interpret mode on any machine;
this file checks what only a compile can break (Triton's lowering, tile shapes, the staged
post-softmax scratch and its barriers).

Run on a GPU machine: python -m pytest tests/attention/test_pallas_gpu_compiled.py
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mta.attention import pallas_gpu
from mta.attention.reference import multi_token_attention_reference

from .test_blockwise import Combo, _inputs
from .test_pallas_gpu import COMBOS

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="compiles Triton kernels: needs a GPU backend"
)


def _for_triton(combo: Combo) -> Combo:
    """The combo with a head dim and blocks Triton tiles (powers of two, at least 16)."""
    return dataclasses.replace(combo, dim=32, blocks=tuple(max(b, 16) for b in combo.blocks))


# The release setting's form with 4 heads (they take the same loops over a program's heads as
# 16, and compile in less of the check's time): D = 64, 6 x 11 convolutions before and
# after the softmax, linear pre mixing, grouped post mixing in groups of 2 (a head's post mixing
# skips the other group, as the release setting's 4 of 16 do), two documents per row, the
# default blocks for such programs (16 x 64), which do not divide T.
RELEASE = Combo("release_form_4_heads_docs", heads=4, kv_heads=4, pre=(6, 11), head_pre="linear",
                post=(6, 11), head_post=2, docs=((170, 130),), num_t=300, blocks=(16, 64),
                dim=64)  # fmt: skip
CASES = [_for_triton(c) for c in COMBOS if c.name != "plain_mqa_docs"] + [RELEASE]


@functools.cache
def _attend(combo):
    blocks = dict(block_q=combo.blocks[0], block_k=combo.blocks[1])
    return jax.jit(lambda *a, **k: pallas_gpu.attention(*a, **k, **blocks, interpret=False))


def _out_and_grads(attend, args, segment_ids, cotangent):
    out, vjp = jax.vjp(lambda a: attend(**a, segment_ids=segment_ids), args)
    return out, vjp(jnp.asarray(cotangent, out.dtype))[0]


@pytest.mark.parametrize("combo", CASES, ids=str)
def test_compiled_kernels_equal_reference(combo):
    q, k, v, kernels, segment_ids, cotangent = _inputs(combo)
    args = {"q": q, "k": k, "v": v, **kernels}
    with jax.default_matmul_precision("highest"):
        got = _out_and_grads(_attend(combo), args, segment_ids, cotangent)
        want = _out_and_grads(multi_token_attention_reference, args, segment_ids, cotangent)
    scale = float(np.abs(want[0]).max())
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4 * scale)
    for name in args:
        scale = float(np.abs(want[1][name]).max())
        np.testing.assert_allclose(
            got[1][name], want[1][name], rtol=1e-4, atol=1e-4 * scale, err_msg=name
        )


def test_release_bfloat16_within_rounding():
    q, k, v, kernels, segment_ids, cotangent = _inputs(RELEASE)
    low = {name: jnp.asarray(x, jnp.bfloat16) for name, x in (("q", q), ("k", k), ("v", v))}
    got = _out_and_grads(_attend(RELEASE), low | kernels, segment_ids, cotangent)
    high = {name: x.astype(jnp.float32) for name, x in low.items()} | kernels
    with jax.default_matmul_precision("highest"):
        want = _out_and_grads(multi_token_attention_reference, high, segment_ids, cotangent)
    assert got[0].dtype == jnp.bfloat16
    scale = float(np.abs(want[0]).max())
    np.testing.assert_allclose(got[0].astype(np.float32), want[0], atol=3e-2 * scale, rtol=3e-2)
    for name in low:
        ref = want[1][name]
        err = np.abs(np.asarray(got[1][name], np.float32) - ref).max()
        assert err <= 5e-2 * np.abs(ref).max(), (name, err, np.abs(ref).max())

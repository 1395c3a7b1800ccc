"""The blockwise MTA impl against the reference: forward, gradients (q, k, v, every kernel), memory.

Compiling dominates (one compile per combination: blockwise out + VJP with tuned and with plain
derivatives inside the tiles, reference out + VJP), so COMBOS
is a covering set: pre only / post only / both / neither, linear / grouped / 3-D pre mixing,
grouped post mixing, MHA / GQA / MQA, c_q in {1, 2, 3}, c_k in {3, 5, 9}, block sizes that do and
do not divide T (and halos wider than a block), packed documents, S > T.
"""

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mta.attention import KernelSpec, blockwise_tiles, choose_impl
from mta.attention import mta as mta_module
from mta.attention.blockwise import multi_token_attention_blockwise
from mta.attention.mta import multi_token_attention
from mta.attention.reference import multi_token_attention_reference

from .kernels import random_kernels

RTOL, ATOL = 1e-5, 1e-5


@dataclass(frozen=True)
class Combo:
    """One configuration. head_pre: None | "linear" | c_h | ("3d", c_h, c_q, c_k)."""

    name: str
    heads: int = 4
    kv_heads: int = 4
    pre: tuple | None = None  # (c_q, c_k) of kq_pre
    head_pre: object = None
    post: tuple | None = None  # (c_q, c_k) of kq_post
    head_post: int | None = None  # c_h of the grouped post mixing
    docs: tuple | None = None  # document lengths of each batch row, e.g. ((5, 8), (2, 6, 5))
    num_t: int = 13
    num_s: int | None = None
    blocks: tuple = (4, 4)  # (block_q, block_k)
    dim: int = 3

    def __str__(self):
        return self.name


COMBOS = [
    # halos cross block and document boundaries: T=13, blocks of 4, c_q=3, c_k=5, docs 5 + 8
    Combo(
        "both_linear_grouped_gqa_docs",
        kv_heads=2,
        pre=(3, 5),
        head_pre="linear",
        post=(3, 5),
        head_post=2,
        docs=((5, 8), (2, 6, 5)),
    ),
    # c_k = 9: a key halo of 4 columns spans two key blocks of 3; blocks divide T
    Combo(
        "pre_grouped_mqa_ck9_docs",
        kv_heads=1,
        pre=(2, 9),
        head_pre=2,
        num_t=12,
        blocks=(4, 3),
        docs=((3, 9), (7, 5)),
    ),
    Combo("post_only_mha_docs", post=(3, 3), head_post=4, num_t=10, blocks=(3, 5), docs=((4, 6),)),
    # rows above a block (2 + 1) exceed block_q = 2: a row's halo gradient spans two later blocks
    Combo(
        "conv3d_post_gqa_docs",
        kv_heads=2,
        head_pre=("3d", 2, 3, 3),
        post=(2, 3),
        num_t=9,
        blocks=(2, 4),
        docs=((4, 5), (1, 8)),
    ),
    Combo(
        "s_gt_t_gqa",
        kv_heads=2,
        pre=(1, 3),
        head_pre="linear",
        post=(2, 3),
        head_post=4,
        num_t=5,
        num_s=11,
        blocks=(2, 4),
    ),
    Combo("plain_mqa_docs", kv_heads=1, num_t=9, docs=((6, 3),)),
    # no documents, T = 4 blocks of 5: tiles off the causal band take the widened matmul
    Combo(
        "both_linear_grouped_wide",
        pre=(3, 5),
        head_pre="linear",
        post=(2, 3),
        head_post=2,
        num_t=20,
        blocks=(5, 5),
    ),
]


def _inputs(combo: Combo, seed: int = 0):
    """q, k, v, kernels, segment_ids ([B, T] or None) and an output cotangent."""
    rng = np.random.default_rng(seed)
    batch = len(combo.docs) if combo.docs else 2
    num_s = combo.num_s or combo.num_t
    q = rng.normal(size=(batch, combo.num_t, combo.heads, combo.dim)).astype(np.float32)
    k = rng.normal(size=(batch, num_s, combo.kv_heads, combo.dim)).astype(np.float32)
    v = rng.normal(size=(batch, num_s, combo.kv_heads, combo.dim)).astype(np.float32)
    segment_ids = None
    if combo.docs:
        segment_ids = np.stack([np.repeat(np.arange(len(row)), row) for row in combo.docs])
        segment_ids = segment_ids.astype(np.int32)
        assert segment_ids.shape == (batch, combo.num_t)
    cotangent = rng.normal(size=q.shape).astype(np.float32)
    return q, k, v, random_kernels(combo, rng), segment_ids, cotangent


def _out_and_grads(attend, args, segment_ids, cotangent):
    """attend(**args, segment_ids) and the VJP of <cotangent, out> w.r.t. every array in args."""
    out, vjp = jax.vjp(lambda a: attend(**a, segment_ids=segment_ids), args)
    return out, vjp(cotangent)[0]


@partial(jax.jit, static_argnames="blocks")
def blockwise_and_reference(args, segment_ids, cotangent, blocks):
    """(out, grads) of the blockwise impl with blocks = (block_q, block_k), tuned and plain
    derivatives in its tiles, and (out, grads) of the reference impl."""

    def blockwise(tuned):
        def attend(**a):
            return multi_token_attention_blockwise(
                **a, block_q=blocks[0], block_k=blocks[1], tuned=tuned
            )

        return _out_and_grads(attend, args, segment_ids, cotangent)

    reference = _out_and_grads(multi_token_attention_reference, args, segment_ids, cotangent)
    return [blockwise(True), blockwise(False)], reference


@pytest.mark.parametrize("combo", COMBOS, ids=str)
def test_blockwise_equals_reference(combo):
    q, k, v, kernels, segment_ids, cotangent = _inputs(combo)
    args = {"q": q, "k": k, "v": v, **kernels}
    impls, (want, want_grads) = blockwise_and_reference(args, segment_ids, cotangent, combo.blocks)
    for out, grads in impls:
        np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
        for name in args:
            np.testing.assert_allclose(
                grads[name], want_grads[name], rtol=RTOL, atol=ATOL, err_msg=name
            )


@pytest.mark.parametrize("combo", COMBOS, ids=str)
def test_causal_and_document_local_through_gradients(combo):
    """With a cotangent only on the queries of one window (each row's second document, or the
    first half of the queries), the gradients of q, k and v outside it are exactly 0."""
    q, k, v, kernels, segment_ids, cotangent = _inputs(combo)
    num_t, num_s = q.shape[1], k.shape[1]
    if combo.docs:  # [lo, hi): each row's second document
        windows = [(row[0], row[0] + row[1]) for row in combo.docs]
    else:
        windows = [(0, num_t // 2)] * q.shape[0]
    inside_BT = np.zeros(q.shape[:2], bool)
    for b, (lo, hi) in enumerate(windows):
        inside_BT[b, lo:hi] = True
    cotangent = np.where(inside_BT[:, :, None, None], cotangent, 0.0).astype(np.float32)
    args = {"q": q, "k": k, "v": v, **kernels}
    impls, _ = blockwise_and_reference(args, segment_ids, cotangent, combo.blocks)
    grads = impls[0][1]
    # query i sits at key position i + S - T; keys before the first query are never outside
    inside_BS = np.pad(inside_BT, ((0, 0), (num_s - num_t, 0)), constant_values=not combo.docs)
    for name, inside in (("q", inside_BT), ("k", inside_BS), ("v", inside_BS)):
        grad = np.abs(np.asarray(grads[name])).sum(axis=(2, 3))
        assert np.all(grad[~inside] == 0.0), name
        assert all(grad[b][inside[b]].max() > 0.0 for b in range(len(grad))), name


def test_impl_switch_dispatches(monkeypatch):
    """Each impl reaches its function; auto takes dense on CPU, reference on other backends, and
    blockwise once one layer's dense maps exceed its share of device memory."""
    calls = []
    for name in ("reference", "dense", "blockwise"):
        fake = partial(lambda name, q, *args, **kwargs: calls.append(name) or q, name)
        monkeypatch.setattr(mta_module, f"multi_token_attention_{name}", fake)
    q, kv = jnp.zeros((1, 5, 2, 2)), jnp.zeros((1, 5, 1, 2))
    for impl in ("reference", "dense", "blockwise", "auto"):
        multi_token_attention(q, kv, kv, impl=impl)
    assert calls == ["reference", "dense", "blockwise", "dense"]  # the tests run on CPU

    spec = KernelSpec.of(8, kq_pre=jnp.ones((8, 6, 11)), kq_post=jnp.ones((8, 6, 11)))
    short, long = (1, 1024, 8, 64), (1, 131072, 8, 64)
    assert choose_impl(spec, short, short, backend="cpu") == "dense"
    assert choose_impl(spec, short, short, backend="gpu") == "reference"
    assert choose_impl(spec, long, long, backend="gpu") == "blockwise"  # 2.2 PB of maps
    monkeypatch.setattr(mta_module, "device_memory_bytes", lambda: 10**6)
    assert choose_impl(spec, short, short, backend="cpu") == "blockwise"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kq_pre": jnp.ones((4, 2, 2))}, "c_k"),
        ({"head_post": jnp.ones((1, 3, 3))}, "head_post"),
        ({"kq_pre": jnp.ones((4, 1, 1)), "head_pre": jnp.ones((2, 2, 2, 1, 1))}, "replaces kq_pre"),
        ({"segment_ids": jnp.zeros((1, 3), jnp.int32)}, "segment_ids"),
        ({"block_q": 0}, "block"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    q = jnp.zeros((1, 4, 4, 2))
    kv = jnp.zeros((1, 4, 2, 2))
    with pytest.raises(ValueError, match=match):
        multi_token_attention_blockwise(q, kv, kv, **kwargs)


def test_forward_backward_memory_is_linear_in_t():
    """Compiled temp memory of out + grads (q, k, v, kernels): at T = 2048 blockwise < dense / 4,
    and doubling T to 4096 at most ~doubles blockwise's (a T x T array would quadruple it).

    Pre and post conv (c_q=3, c_k=5), linear pre and grouped post mixing, H=2, D=8. (The release
    setting H=8, D=64, c_q=6, c_k=11 at T=2048 measured the same way: 1160 MB dense, 94 MB
    blockwise, most of it the row strips of 128 + 5 rows x T.)
    """
    heads, dim = 2, 8
    rng = np.random.default_rng(1)
    kernels = {
        "kq_pre": rng.normal(size=(heads, 3, 5)).astype(np.float32),
        "head_pre": rng.normal(size=(heads, heads)).astype(np.float32),
        "kq_post": rng.normal(size=(heads, 3, 5)).astype(np.float32),
        "head_post": rng.normal(size=(1, heads, heads)).astype(np.float32),
    }

    def temp_bytes(attend, num_t):
        q = jax.ShapeDtypeStruct((1, num_t, heads, dim), jnp.float32)
        kv = jax.ShapeDtypeStruct((1, num_t, 1, dim), jnp.float32)

        def loss(q, k, v, kernels):
            return jnp.sum(attend(q, k, v, **kernels) ** 2)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
        return grad.lower(q, kv, kv, kernels).compile().memory_analysis().temp_size_in_bytes

    dense = temp_bytes(multi_token_attention, 2048)
    blockwise = {t: temp_bytes(multi_token_attention_blockwise, t) for t in (2048, 4096)}
    print(f"temp bytes: dense at T=2048 {dense}, blockwise {blockwise}")
    assert dense > 4 * 2048 * 2048 * heads * 4  # dense holds several [H, T, T] float32 arrays
    assert blockwise[2048] < dense / 4
    assert blockwise[4096] < 2.2 * blockwise[2048]


def test_tile_counts(monkeypatch):
    """Pre-softmax logit tiles computed, counted by TILE_COUNTER: once per tile in the forward
    (tiles = the (query block, key block) pairs causality needs), some of them through the
    widened matmul; in the backward once per tile (the strip) and once more for each tile on
    the band (its VJP; off the band the VJP computes no logits, even with head mixing); and the
    result still equals the reference."""
    combo = next(c for c in COMBOS if c.name == "both_linear_grouped_wide")
    q, k, v, kernels, _, cotangent = _inputs(combo)
    args = {"q": q, "k": k, "v": v, **kernels}
    counter = {"enabled": True, "count": 0, "wide": 0}
    monkeypatch.setattr(blockwise_tiles, "TILE_COUNTER", counter)
    block_q, block_k = 3, 4  # 7 query blocks x 5 key blocks, of which causality needs 23
    tiles = sum(min(5, (qb * 3 + 2) // 4 + 1) for qb in range(7))

    def attend(**a):
        return multi_token_attention_blockwise(**a, block_q=block_q, block_k=block_k, tuned=True)

    out = jax.jit(lambda a: attend(**a))(args)
    jax.effects_barrier()
    assert (tiles, counter["count"]) == (23, 23)
    wide = counter["wide"]
    assert 0 < wide < tiles  # off the band widened, on it convolved
    counter.update(count=0, wide=0)
    grads = jax.jit(lambda a: jax.vjp(lambda a: attend(**a), a)[1](cotangent)[0])(args)
    jax.effects_barrier()
    # the VJP's forward, the backward's strips, then the band tiles' VJPs: at most the forward's
    # band tiles (a VJP tile has no post halo rows, so it can be off the band where its strip
    # tile was not)
    assert counter["wide"] == 2 * wide
    assert 2 * tiles < counter["count"] <= 2 * tiles + (tiles - wide)
    want, want_grads = _out_and_grads(multi_token_attention_reference, args, None, cotangent)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
    for name in args:
        np.testing.assert_allclose(grads[name], want_grads[name], rtol=RTOL, atol=ATOL)

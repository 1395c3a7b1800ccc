"""impl="pallas" against the reference (Pallas interpret mode on CPU): forward, gradients (q, k, v,
every MTA kernel), causality and documents through gradients, bfloat16 inputs, the fallback.

Compiling the interpret-mode kernels dominates (10-20 s a combination), so COMBOS is a covering set
of the MTA grid: pre only / post only / both / mixing only / neither; pre mixing none, linear,
grouped; post mixing none, linear, grouped; MHA / GQA / MQA; S > T; block sizes that do not divide
T; packed documents whose boundaries fall inside blocks, with c_q >= 2 so halos cross them.
"""

import logging
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mta.attention import mta as mta_module
from mta.attention.chunked import use_chunks
from mta.attention.kernels import dense_mixing
from mta.attention.mta import multi_token_attention
from mta.attention.pallas_mta import multi_token_attention_pallas
from mta.attention.reference import mix_heads, multi_token_attention_reference

from .test_blockwise import Combo, _inputs

RTOL, ATOL = 2e-5, 2e-5

COMBOS = [
    # T = 45 in blocks of 16 x 12; documents 20 + 25 and 7 + 18 + 20 end inside blocks
    Combo(
        "both_linear_grouped_gqa_docs",
        kv_heads=2,
        pre=(3, 5),
        head_pre="linear",
        post=(3, 3),
        head_post=2,
        docs=((20, 25), (7, 18, 20)),
        num_t=45,
        blocks=(16, 12),
        dim=8,
    ),
    Combo("pre_only_mha_docs", heads=2, kv_heads=2, pre=(2, 3), docs=((13, 27),), num_t=40,
          blocks=(16, 16), dim=8),
    Combo("post_only_grouped_mqa", kv_heads=1, post=(2, 3), head_post=4, num_t=41,
          blocks=(16, 8), dim=8),
    Combo("pre_grouped_post_conv_docs", pre=(2, 3), head_pre=2, post=(2, 3), docs=((17, 23),),
          num_t=40, blocks=(12, 12), dim=8),
    Combo("mixing_only_gqa_s_gt_t", kv_heads=2, head_pre="linear", num_t=20, num_s=44,
          blocks=(8, 16), dim=8),
    Combo("plain_mqa_docs", kv_heads=1, num_t=40, blocks=(16, 12), docs=((9, 31),), dim=8),
]  # fmt: skip
LINEAR_POST = {"mixing_only_gqa_s_gt_t"}


def _out_and_grads(attend, args, segment_ids, cotangent):
    out, vjp = jax.vjp(lambda a: attend(**a, segment_ids=segment_ids), args)
    return out, vjp(cotangent)[0]


@partial(jax.jit, static_argnames="blocks")
def pallas_and_reference(args, segment_ids, cotangent, blocks):
    """(out, grads) of impl=pallas with blocks = (block_q, block_k) and of the reference."""
    attend = partial(multi_token_attention_pallas, block_q=blocks[0], block_k=blocks[1])
    return (
        _out_and_grads(attend, args, segment_ids, cotangent),
        _out_and_grads(multi_token_attention_reference, args, segment_ids, cotangent),
    )


def _check_equal(args, segment_ids, cotangent, blocks):
    (out, grads), (want, want_grads) = pallas_and_reference(args, segment_ids, cotangent, blocks)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
    for name in args:
        np.testing.assert_allclose(
            grads[name], want_grads[name], rtol=RTOL, atol=ATOL, err_msg=name
        )


@pytest.mark.parametrize("combo", COMBOS, ids=str)
def test_pallas_equals_reference(combo):
    q, k, v, kernels, segment_ids, cotangent = _inputs(combo)
    if combo.name in LINEAR_POST:  # talking heads: [H, H] post mixing (Combo draws grouped)
        heads = combo.heads
        kernels["head_post"] = (
            np.random.default_rng(3).normal(size=(heads, heads)).astype(np.float32)
        )
    _check_equal({"q": q, "k": k, "v": v, **kernels}, segment_ids, cotangent, combo.blocks)


@pytest.mark.parametrize("combo", COMBOS[:2], ids=str)
def test_causal_and_document_local_through_gradients(combo):
    """A cotangent only on each row's second document: the gradients of q, k and v outside it
    are exactly 0 (and nonzero inside)."""
    q, k, v, kernels, segment_ids, cotangent = _inputs(combo)
    inside_BT = np.zeros(q.shape[:2], bool)
    for b, row in enumerate(combo.docs):
        inside_BT[b, row[0] : row[0] + row[1]] = True
    cotangent = np.where(inside_BT[:, :, None, None], cotangent, 0.0).astype(np.float32)
    args = {"q": q, "k": k, "v": v, **kernels}
    (_, grads), _ = pallas_and_reference(args, segment_ids, cotangent, combo.blocks)
    for name in ("q", "k", "v"):
        grad = np.abs(np.asarray(grads[name])).sum(axis=(2, 3))
        assert np.all(grad[~inside_BT] == 0.0), name
        assert all(grad[b][inside_BT[b]].max() > 0.0 for b in range(len(grad))), name


def test_causal_through_gradients_without_documents():
    """Cotangent on the first half of the queries only: no gradient reaches later q, k, v."""
    combo = COMBOS[2]
    q, k, v, kernels, segment_ids, cotangent = _inputs(combo)
    half = combo.num_t // 2
    cotangent[:, half:] = 0.0
    args = {"q": q, "k": k, "v": v, **kernels}
    (_, grads), _ = pallas_and_reference(args, segment_ids, cotangent, combo.blocks)
    for name in ("q", "k", "v"):
        grad = np.abs(np.asarray(grads[name])).sum(axis=(2, 3))
        assert np.all(grad[:, half:] == 0.0) and np.all(grad[:, :half].max(axis=1) > 0), name


def test_bfloat16_inputs_accumulate_in_float32():
    """bfloat16 q, k, v: output and gradients within bfloat16 rounding of the float32 reference
    on the same (rounded) inputs; the output keeps v's dtype."""
    combo = COMBOS[1]
    q, k, v, kernels, segment_ids, cotangent = _inputs(combo)
    low = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    high = [x.astype(jnp.float32) for x in low]

    def grads(attend, q, k, v):
        out, vjp = jax.vjp(
            lambda q, k, v: attend(q, k, v, **kernels, segment_ids=segment_ids), q, k, v
        )
        return out, vjp(jnp.asarray(cotangent, out.dtype))

    attend = partial(multi_token_attention_pallas, block_q=16, block_k=16)
    out, d_low = jax.jit(partial(grads, attend))(*low)
    want, d_high = grads(multi_token_attention_reference, *high)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), want, rtol=3e-2, atol=3e-2)
    for got, ref in zip(d_low, d_high, strict=True):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(got.astype(jnp.float32), ref, rtol=5e-2, atol=5e-2)


def test_dense_mixing_is_the_grouped_form():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(2, 3, 3)).astype(np.float32)
    x = rng.normal(size=(1, 6, 4, 5)).astype(np.float32)
    want = mix_heads(x, weights)
    got = jnp.einsum("gh,bhts->bgts", dense_mixing(jnp.asarray(weights)), x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_full_3d_pre_conv_falls_back_to_blockwise(caplog):
    """A 5-D head_pre is not in the kernel: one info line names it, the result is blockwise's."""
    combo = Combo("conv3d", head_pre=("3d", 2, 2, 3), num_t=9, dim=4)
    q, k, v, kernels, segment_ids, _ = _inputs(combo)
    with caplog.at_level(logging.INFO, logger="mta.attention.pallas_mta"):
        out = multi_token_attention_pallas(q, k, v, **kernels, block_q=4, block_k=4)
    lines = [r.getMessage() for r in caplog.records if r.name == "mta.attention.pallas_mta"]
    assert len(lines) == 1 and "3-D" in lines[0] and "blockwise" in lines[0]
    want = multi_token_attention_reference(q, k, v, **kernels)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)


def test_gpu_backend_routes_to_the_triton_kernels(caplog, monkeypatch):
    """On a GPU backend MTA goes to the Triton-shaped kernels (pallas_gpu.py, tested in
    test_pallas_gpu.py); sizes Triton cannot tile fall back to blockwise with one info line."""
    from mta.attention import pallas_gpu, pallas_mta

    monkeypatch.setattr(pallas_mta, "_backend", lambda: "gpu")
    calls = []
    monkeypatch.setattr(pallas_gpu, "attention", lambda q, *a, **kw: calls.append(kw) or q)
    combo = Combo("both_d16", pre=(2, 3), head_pre=2, post=(2, 3), head_post=2, num_t=20, dim=16)
    q, k, v, kernels, segment_ids, _ = _inputs(combo)
    multi_token_attention_pallas(q, k, v, **kernels, segment_ids=segment_ids)
    assert len(calls) == 1 and calls[0]["block_q"] == calls[0]["block_k"] == 64
    assert all(calls[0][name] is kernels[name] for name in kernels)
    # linear pre mixing joins all 4 heads in one program: 16-row query blocks by default
    linear = {**kernels, "head_pre": np.eye(4, dtype=np.float32)}
    multi_token_attention_pallas(q, k, v, **linear, segment_ids=segment_ids)
    assert calls[1]["block_q"] == 16 and calls[1]["block_k"] == 64
    multi_token_attention_pallas(q, k, v, **linear, block_q=32)
    assert calls[2]["block_q"] == 32
    with caplog.at_level(logging.INFO, logger="mta.attention.pallas_mta"):
        out = multi_token_attention_pallas(q, k, v, **kernels, block_q=48)
    lines = [r.getMessage() for r in caplog.records if r.name == "mta.attention.pallas_mta"]
    assert len(lines) == 1 and "powers of two" in lines[0] and "blockwise" in lines[0]
    assert len(calls) == 3
    want = multi_token_attention_reference(q, k, v, **kernels)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)


def test_kernels_do_not_lower_for_cuda():
    """Why GPUs get their own kernel (pallas_gpu.py): exported for CUDA from this machine, these
    kernels stop at their overlapping pl.Element windows."""
    from jax import export

    spec = jax.ShapeDtypeStruct
    q, kernel = spec((1, 64, 2, 8), jnp.float32), spec((2, 2, 3), jnp.float32)

    def attend(q, k, v, kq_pre):
        return multi_token_attention_pallas(
            q, k, v, kq_pre=kq_pre, block_q=32, block_k=32, interpret=False
        )

    with pytest.raises(NotImplementedError, match="Blocked"):
        export.export(jax.jit(attend), platforms=["cuda"])(q, q, q, kernel)


def test_impl_pallas_dispatches_and_auto_never_picks_it(monkeypatch):
    calls = []
    fake = partial(lambda name, q, *args, **kwargs: calls.append(name) or q, "pallas")
    monkeypatch.setattr(mta_module, "multi_token_attention_pallas", fake)
    q, kv = jnp.zeros((1, 5, 2, 2)), jnp.zeros((1, 5, 1, 2))
    multi_token_attention(q, kv, kv, impl="pallas")
    multi_token_attention(q, kv, kv, impl="auto")
    assert calls == ["pallas"]
    # FoX and stick-breaking have no Pallas kernel: pallas means their O(T) chunked path
    assert use_chunks("pallas", q.shape, kv.shape) and not use_chunks("dense", q.shape, kv.shape)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kq_pre": jnp.ones((4, 2, 2))}, "c_k"),
        ({"segment_ids": jnp.zeros((1, 3), jnp.int32)}, "segment_ids"),
        ({"block_k": 0}, "block"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    q, kv = jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 2, 2))
    with pytest.raises(ValueError, match=match):
        multi_token_attention_pallas(q, kv, kv, **kwargs)


def test_kernels_lower_to_mosaic_tpu():
    """The same kernel bodies, compiled (interpret=False), lower to Mosaic TPU: jax.export for a
    TPU v5e from this CPU machine, bfloat16 inputs, every MTA part and documents. (Lowering
    only; Mosaic's own compile and a run need a TPU.)"""
    from jax import export

    num_t, heads, dim = 128, 4, 64
    spec = jax.ShapeDtypeStruct
    q, kv = spec((1, num_t, heads, dim), jnp.bfloat16), spec((1, num_t, 2, dim), jnp.bfloat16)
    kernels = {
        "kq_pre": spec((heads, 3, 5), jnp.float32),
        "head_pre": spec((heads, heads), jnp.float32),
        "kq_post": spec((heads, 2, 3), jnp.float32),
        "head_post": spec((1, heads, heads), jnp.float32),
    }

    def out_and_grads(q, k, v, kernels, segment_ids):
        def attend(q, k, v, kernels):
            return multi_token_attention_pallas(
                q, k, v, **kernels, segment_ids=segment_ids, block_q=64, block_k=64,
                interpret=False,
            )  # fmt: skip

        out, vjp = jax.vjp(attend, q, k, v, kernels)
        return out, vjp(out)

    device = jax.sharding.AbstractDevice(device_kind="TPU v5e", num_cores=1, platform="tpu")
    with jax.sharding.use_abstract_mesh(
        jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    ):
        exported = export.export(jax.jit(out_and_grads), platforms=["tpu"])(
            q, kv, kv, kernels, spec((1, num_t), jnp.int32)
        )
    module = exported.mlir_module()
    for name in ("stats_kernel", "out_kernel", "delta_kernel", "dq_kernel", "dkv_kernel"):
        assert name in module, name


MODEL_MTA = [  # one layer with every MTA part, GQA
    "model.num_layers=1",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "model.attention.kq_pre.enabled=true",
    "model.attention.kq_pre.c_q=3",
    "model.attention.kq_pre.c_k=5",
    "model.attention.kq_post.enabled=true",
    "model.attention.kq_post.c_q=2",
    "model.attention.kq_post.c_k=3",
    "model.attention.kq_layers=[0]",
    "model.attention.head_pre=linear",
    "model.attention.head_post=grouped",
    "model.attention.head_group_size=2",
    "model.attention.kernel_init=uniform",
]


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_model_with_impl_pallas_equals_reference(tiny_config, monkeypatch, backend):
    """model.attention.impl=pallas in the Transformer, packed documents: logits and the
    gradients of every parameter equal those of impl=reference. backend "gpu": the backend is
    reported as a GPU, so the Triton-shaped kernels run (in interpret mode here)."""
    from flax import nnx

    from mta.attention import pallas_gpu, pallas_mta
    from mta.model import Transformer
    from mta.resolve import resolve_model

    calls = []
    if backend == "gpu":
        monkeypatch.setattr(pallas_mta, "_backend", lambda: "gpu")
        gpu_kernels = partial(pallas_gpu.attention, interpret=True)
        monkeypatch.setattr(
            pallas_gpu, "attention", lambda *a, **k: calls.append(1) or gpu_kernels(*a, **k)
        )

    tokens = jax.random.randint(jax.random.key(0), (1, 11), 3, 259)
    segment_ids = jnp.array([[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    positions = jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5]])
    cotangent = jax.random.normal(jax.random.key(1), (1, 11, 259))

    def run(impl):
        cfg = tiny_config(*MODEL_MTA, "model.head_dim=16", f"model.attention.impl={impl}").model
        graph, params = nnx.split(Transformer(resolve_model(cfg), nnx.Rngs(0)))

        def loss(params):
            logits = nnx.merge(graph, params)(tokens, positions, segment_ids)
            return jnp.vdot(logits, cotangent), logits

        return jax.jit(jax.grad(loss, has_aux=True))(params)

    grads, logits = run("pallas")
    assert len(calls) == (backend == "gpu")  # one layer, traced once
    want_grads, want_logits = run("reference")
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

"""The dense impl (tuned and plain derivatives) against the reference impl: forward and gradients
w.r.t. q, k, v and every kernel, on the combinations of test_mta.py."""

import jax
import numpy as np
import pytest

from mta.attention import multi_token_attention

from .test_mta import COMBOS, _inputs


@jax.jit
def dense_and_reference(args, segment_ids, cotangent):
    """(out, VJP of <cotangent, out> w.r.t. every array in args) of the dense impl with tuned
    derivatives, with plain autodiff, and of the reference impl."""

    def out_and_grads(impl, tuned):
        def attend(a):
            return multi_token_attention(**a, segment_ids=segment_ids, impl=impl, tuned=tuned)

        out, vjp = jax.vjp(attend, args)
        return out, vjp(cotangent)[0]

    return [out_and_grads("dense", True), out_and_grads("dense", False)], out_and_grads(
        "reference", False
    )


@pytest.mark.parametrize("combo", COMBOS, ids=str)
def test_dense_impl_equals_reference(combo):
    """Forward and gradients (q, k, v, every kernel), tuned and plain derivatives."""
    q, k, v, kernels, segment_ids = _inputs(combo, seed=12)
    cotangent = np.random.default_rng(13).normal(size=q.shape).astype(np.float32)
    args = {"q": q, "k": k, "v": v, **kernels}
    impls, (want, want_grads) = dense_and_reference(args, segment_ids, cotangent)
    for out, grads in impls:
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
        for name in args:
            np.testing.assert_allclose(grads[name], want_grads[name], rtol=1e-4, atol=1e-4)

"""Random MTA kernels for the attention tests."""

import numpy as np


def random_kernels(combo, rng) -> dict:
    """Random non-identity float32 kernels for the parts `combo` uses, keyed by
    multi_token_attention's argument names. `combo` has heads, pre and post ((c_q, c_k) or None),
    head_pre (None | "linear" | c_h | ("3d", c_h, c_q, c_k)) and head_post (c_h or None)."""
    h = combo.heads

    def draw(*shape):
        return rng.normal(scale=0.5, size=shape).astype(np.float32)

    kernels = {}
    if combo.pre is not None:
        kernels["kq_pre"] = draw(h, *combo.pre)
    if combo.head_pre == "linear":
        kernels["head_pre"] = draw(h, h)
    elif isinstance(combo.head_pre, tuple):
        _, c_h, c_q, c_k = combo.head_pre
        kernels["head_pre"] = draw(h // c_h, c_h, c_h, c_q, c_k)
    elif combo.head_pre is not None:
        kernels["head_pre"] = draw(h // combo.head_pre, combo.head_pre, combo.head_pre)
    if combo.post is not None:
        kernels["kq_post"] = draw(h, *combo.post)
    if combo.head_post is not None:
        kernels["head_post"] = draw(h // combo.head_post, combo.head_post, combo.head_post)
    return kernels

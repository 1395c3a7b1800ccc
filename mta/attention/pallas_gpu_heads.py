"""Programs of several heads in the Triton-shaped MTA kernels (Layout.staged_heads: those with a
head mixing, which joins its heads into one program, all 16 in the release setting). Unrolled
once per head, the post part and the mixings hold G tiles per quantity in registers: at 16
heads the backward kernels spilled 6.5 KB per thread and took 7-18 minutes each to compile
(docs/benchmarks.md). Here every per-head quantity lives in the program's scratch and each step
is a loop over the heads, so the kernel body holds one head's code and a tile or two at a time.

The program's buffers ([G, rows, cols] float32 outputs it owns, read back after a barrier):

    z       [G, bq, bk]             logits of a tile or window piece; dz; C (post_grads)
    work    [G, bq, bk]             dA = mask(dO v^T); C (out); dP; dy without a post part
    window  [G, bq + M, bk + 2M]    the post conv's staged P or dC (pallas_gpu_window.py);
                                    then dy

A mixing y_g = sum_h W[g, h] x_h is a loop over g with an inner loop over the heads h of g's
mixing group (c_h of them, all G for a linear mixing) that reads one tile of x at a time: G c_h
tile loads, served by L1 / L2, instead of G live tiles.
"""

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mta.attention.pallas_gpu_tiles import Tiles, barrier, dot, dot_nn, dot_tn
from mta.attention.pallas_gpu_window import conv_head, d_conv_head, stage


def _at(n_r, n_c, at_r=0, at_c=0):
    return pl.ds(at_r, n_r), pl.ds(at_c, n_c)


class HeadLoop:
    """The per-step work of one program of heads (t = 0 .. G - 1, head heads[0] + t) as loops
    over its heads. window: the post part's staged scratch (None without a post part)."""

    def __init__(self, tiles: Tiles, heads: list, window=None):
        self.tiles, self.lay, self.heads, self.window = tiles, tiles.lay, heads, window
        self.z, self.work = tiles.refs["z_scratch"], tiles.refs["work"]

    def each(self, fn):
        """fn(t, h) for the program's heads, as one loop."""
        h0 = self.heads[0]

        def body(t, carry):
            fn(t, h0 + t)
            return carry

        lax.fori_loop(0, len(self.heads), body, None)

    def over_group(self, name: str, t, fn, init):
        """fn(u, carry) over the program heads u in head t's group of mixing name (the dense W
        is 0 outside it) -> the final carry. A loop over all G heads that skips the others:
        a loop of c_h < G steps spilled 6-7x as much in delta, dq and dkv (by all signs
        unrolled, its loads then live at once; scripts/gpu_kernel_ir.py --cubin)."""
        size = self.lay.mixing if name == "mix" else self.lay.mixing_post
        if size == len(self.heads):
            return lax.fori_loop(0, size, fn, init)
        first = (t // size) * size

        def body(u, carry):
            inside = (u >= first) & (u < first + size)
            return lax.cond(inside, fn, lambda u, carry: carry, u, carry)

        return lax.fori_loop(0, len(self.heads), body, init)

    def mixed(self, name: str, t, buf, n_r: int, n_c: int, transposed=False):
        """sum_u W[t, u] buf[u] over head t's group (W[u, t] when transposed), on buf's
        [n_r, n_c] corner; buf[t] without that mixing."""
        if name not in self.tiles.refs:
            return buf[(t, *_at(n_r, n_c))]
        mix, h0 = self.tiles.refs[name], self.heads[0]

        def term(u, acc):
            w = mix[h0 + u, h0 + t] if transposed else mix[h0 + t, h0 + u]
            return acc + w * buf[(u, *_at(n_r, n_c))]

        return self.over_group(name, t, term, jnp.zeros((n_r, n_c), jnp.float32))

    # --- forward quantities

    def logits(self, i0, j0, n_r: int, n_c: int):
        """z of every program head into z[:, :n_r, :n_c]."""

        def one(t, h):
            self.z[(t, *_at(n_r, n_c))] = self.tiles.logits(h, i0, j0, n_r, n_c)

        barrier(self.lay)  # earlier reads of z are done
        self.each(one)
        barrier(self.lay)

    def probs(self, t, i0, j0, n_r: int, n_c: int):
        """p = exp(y - lse) where allowed of program head t, from the logits in z: [n_r, n_c]."""
        y = self.mixed("mix", t, self.z, n_r, n_c)
        keep = self.tiles.allowed(i0, j0, 0, 0, n_r, n_c)
        lse = self.tiles.rows("lse", self.heads[0] + t, i0, 0, n_r)
        return jnp.where(keep, jnp.exp(y - lse[:, None]), 0.0)

    def stage_probs(self, i0, j0):
        """P of every program head staged above the tile in the window."""

        def write(r0, n_r, c0, n_c, at_r, at_c):
            self.logits(r0, c0, n_r, n_c)

            def one(t, h):
                self.window[(t, *_at(n_r, n_c, at_r, at_c))] = self.probs(t, r0, c0, n_r, n_c)

            self.each(one)

        stage(self.tiles, write, i0, j0, above=True)

    def post_weights(self, i0, j0):
        """C = conv_post(P) of every program head into work; -> A of program head t (a
        function of t): mask_0(mix_post(C)) [bq, bk]."""
        bq, bk = self.lay.block_q, self.lay.block_k
        self.stage_probs(i0, j0)

        def one(t, h):
            self.work[(t, *_at(bq, bk))] = conv_head(self.tiles, self.window, t, h, i0)[0]

        self.each(one)
        barrier(self.lay)
        keep = self.tiles.allowed(i0, j0)
        return lambda t: jnp.where(keep, self.mixed("mix_post", t, self.work, bq, bk), 0.0)

    # --- backward quantities

    def d_attention(self, h, i0, j0, n_r=None, n_c=None):
        return self.tiles.d_attention([h], i0, j0, n_r, n_c)[0]

    def d_probs(self, i0, j0):
        """dP = conv_post^T(dC) of every program head into work, dC = mix_post^T(mask(dO v^T))
        staged below the tile in the window."""
        lay, mixing = self.lay, "mix_post" in self.tiles.refs

        def write(r0, n_r, c0, n_c, at_r, at_c):
            into, at = (self.work, (0, 0)) if mixing else (self.window, (at_r, at_c))

            def d_a(t, h):
                into[(t, *_at(n_r, n_c, *at))] = self.d_attention(h, r0, c0, n_r, n_c)

            def d_c(t, h):
                d_c = self.mixed("mix_post", t, self.work, n_r, n_c, transposed=True)
                self.window[(t, *_at(n_r, n_c, at_r, at_c))] = d_c

            barrier(lay)  # earlier reads of work are done
            self.each(d_a)
            if mixing:
                barrier(lay)
                self.each(d_c)

        stage(self.tiles, write, i0, j0, above=False)

        def one(t, h):
            self.work[(t, *_at(lay.block_q, lay.block_k))] = d_conv_head(
                self.tiles, self.window, t, h, i0
            )

        self.each(one)
        barrier(lay)

    def d_logits(self, i0, j0, d_mix_ref=None, dv_ref=None):
        """dz of every program head, from its logits: -> the buffer that holds it ([G, bq, bk]
        at the corner). With d_mix_ref [G, P'] adds dW[g, h] = sum dy_g z_h at row g, slot h -
        heads[0]; with dv_ref [G, bk, D] (no post part) adds p^T dO."""
        lay, tiles = self.lay, self.tiles
        bq, bk = lay.block_q, lay.block_k
        self.logits(i0, j0, bq, bk)
        if lay.post:
            self.d_probs(i0, j0)
        d_y_buf = self.window if lay.post else self.work

        def d_y(t, h):
            p = self.probs(t, i0, j0, bq, bk)
            d_p = self.work[(t, *_at(bq, bk))] if lay.post else self.d_attention(h, i0, j0)
            d_y_buf[(t, *_at(bq, bk))] = p * (d_p - tiles.rows("delta", h, i0)[:, None])
            if dv_ref is not None:
                d_out = tiles.rows("d_out", h, i0)
                dv_ref[t, :, :] += dot_tn(p.astype(d_out.dtype), d_out)

        self.each(d_y)
        barrier(lay)
        if "mix" not in tiles.refs:
            return d_y_buf
        pairs = d_mix_ref is not None and not self.grad_dots(d_mix_ref)
        if d_mix_ref is not None and not pairs:
            self.mixing_grad("mix", d_y_buf, self.z, d_mix_ref)
            barrier(lay)  # z is read before it is overwritten
        mix, h0 = tiles.refs["mix"], self.heads[0]
        slots = lax.broadcasted_iota(jnp.int32, d_mix_ref.shape[-1:], 0) if pairs else None

        def d_z(t, h):  # dz_h = sum_g W[g, h] dy_g; z[t] is read before it is overwritten
            z = self.z[(t, *_at(bq, bk))] if pairs else None

            def term(u, acc):
                d_y = d_y_buf[(u, *_at(bq, bk))]
                if pairs:  # dW[g, h] with the tile of dy_g that dz_h reads anyway
                    d_mix_ref[u, :] += jnp.where(slots == t, jnp.sum(d_y * z), 0.0)
                return acc + mix[h0 + u, h] * d_y

            zeros = jnp.zeros((bq, bk), jnp.float32)
            self.z[(t, *_at(bq, bk))] = self.over_group("mix", t, term, zeros)

        self.each(d_z)
        barrier(lay)
        return self.z

    def grad_dots(self, d_mix_ref) -> bool:
        """A mixing's weight gradient as dots over the heads: 16 or more heads (Triton's dots
        are 16 wide), as many as d_mix_ref's slots."""
        return len(self.heads) >= 16 and len(self.heads) == d_mix_ref.shape[-1]

    def mixing_grad(self, name: str, d_buf, x_buf, d_mix_ref):
        """Adds dW[g, h] = sum d_buf[g] x_buf[h] over the tile (y_g = sum_h W[g, h] x_h, d_buf
        the gradient w.r.t. y) to d_mix_ref [G, P'] at row g, slot h - heads[0]: with
        grad_dots a [G, bk] x [bk, G] dot per tile row, else a sum per pair of head g's group."""
        bq, bk, heads = self.lay.block_q, self.lay.block_k, len(self.heads)
        if self.grad_dots(d_mix_ref):

            def row(r, acc):
                return acc + dot(d_buf[:, r, pl.ds(0, bk)], x_buf[:, r, pl.ds(0, bk)])

            zeros = jnp.zeros((heads, heads), jnp.float32)
            d_mix_ref[:, :] += lax.fori_loop(0, bq, row, zeros)
            return
        slots = lax.broadcasted_iota(jnp.int32, d_mix_ref.shape[-1:], 0)

        def one(t, h):
            d = d_buf[(t, *_at(bq, bk))]

            def term(u, vec):
                return vec + jnp.where(slots == u, jnp.sum(d * x_buf[(u, *_at(bq, bk))]), 0.0)

            zeros = jnp.zeros(slots.shape, jnp.float32)
            d_mix_ref[t, :] += self.over_group(name, t, term, zeros)

        self.each(one)

    def post_grads(self, i0, j0, dv_ref, d_theta_ref, d_mix_ref):
        """post_dv_kernel's step: adds A^T dO to dv_ref [G, bk, D], d theta_post to
        d_theta_ref [G, P] and dW'[g, h] = sum dA_g C_h to d_mix_ref [G, P'] (where present)."""
        lay, tiles = self.lay, self.tiles
        bq, bk = lay.block_q, lay.block_k

        def d_a(t, h):
            self.work[(t, *_at(bq, bk))] = self.d_attention(h, i0, j0)

        barrier(lay)  # the previous step's reads of work are done
        self.each(d_a)
        self.stage_probs(i0, j0)  # ends with a barrier: work is written

        def conv(t, h):
            d_c = None
            if d_theta_ref is not None:
                d_c = self.mixed("mix_post", t, self.work, bq, bk, transposed=True)
            c, d_theta = conv_head(tiles, self.window, t, h, i0, d_c)
            self.z[(t, *_at(bq, bk))] = c
            if d_theta_ref is not None:
                d_theta_ref[t, :] += d_theta

        self.each(conv)
        barrier(lay)
        keep = tiles.allowed(i0, j0)

        def dv(t, h):
            a = jnp.where(keep, self.mixed("mix_post", t, self.z, bq, bk), 0.0)
            d_out = tiles.rows("d_out", h, i0)
            dv_ref[t, :, :] += dot_tn(a.astype(d_out.dtype), d_out)

        self.each(dv)
        if d_mix_ref is not None:
            self.mixing_grad("mix_post", self.work, self.z, d_mix_ref)

    def out(self, i0, j0, o_ref):
        """post_out_kernel's step: adds A v to o_ref [G, bq, D]."""
        a = self.post_weights(i0, j0)

        def one(t, h):
            v = self.tiles.cols("v", h, j0)
            o_ref[t, :, :] += dot_nn(a(t).astype(v.dtype), v)

        self.each(one)

    def delta(self, i0, j0, delta_ref):
        """post_delta_kernel's step: adds sum_j P dP to delta_ref [G, bq]."""
        bq, bk = self.lay.block_q, self.lay.block_k
        self.d_probs(i0, j0)
        self.logits(i0, j0, bq, bk)

        def one(t, h):
            d_p = self.work[(t, *_at(bq, bk))]
            delta_ref[t, :] += jnp.sum(self.probs(t, i0, j0, bq, bk) * d_p, axis=1)

        self.each(one)

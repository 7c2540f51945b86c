"""Selective scan (the Mamba SSM): diagonal, input-dependent linear recurrence."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mad_jax.ops import dispatch


def _discretize(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN):
    f32 = jnp.float32
    dt_BxLxD = dt_BxLxD.astype(f32)
    decay_BxLxDxN = jnp.exp(dt_BxLxD[..., None] * A_DxN.astype(f32))
    inp_BxLxDxN = (dt_BxLxD * x_BxLxD.astype(f32))[..., None] * B_BxLxN.astype(f32)[:, :, None, :]
    return decay_BxLxDxN, inp_BxLxDxN


def associative_selective_scan(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN):
    """Reference: h_t = exp(dt_t A) h_{t-1} + (dt_t x_t) B_t, y_t = h_t C_t by associative scan.

    x, dt: [B, L, D]; A: [D, N]; B, C: [B, L, N]. float32 inside; returns [B, L, D] in x.dtype.
    Materialises the [B, L, D, N] state sequence (the cost the Pallas kernel avoids).
    """
    decay_BxLxDxN, inp_BxLxDxN = _discretize(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN)

    def combine(left, right):
        a_l, b_l = left
        a_r, b_r = right
        return a_l * a_r, a_r * b_l + b_r

    _, h_BxLxDxN = jax.lax.associative_scan(combine, (decay_BxLxDxN, inp_BxLxDxN), axis=1)
    y_BxLxD = jnp.einsum("bldn,bln->bld", h_BxLxDxN, C_BxLxN.astype(jnp.float32))
    return y_BxLxD.astype(x_BxLxD.dtype)


def selective_scan_sequential(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN):
    """The same recurrence as a lax.scan over time (an O(L) loop; the test oracle)."""
    f32 = jnp.float32
    batch, _, dim = x_BxLxD.shape
    n_state = A_DxN.shape[1]
    A_DxN = A_DxN.astype(f32)

    def step(h_BxDxN, inputs):
        x_BxD, dt_BxD, b_BxN, c_BxN = (a.astype(f32) for a in inputs)
        h_BxDxN = (jnp.exp(dt_BxD[..., None] * A_DxN) * h_BxDxN
                   + (dt_BxD * x_BxD)[..., None] * b_BxN[:, None, :])
        return h_BxDxN, jnp.einsum("bdn,bn->bd", h_BxDxN, c_BxN)

    time_major = [jnp.swapaxes(a, 0, 1) for a in (x_BxLxD, dt_BxLxD, B_BxLxN, C_BxLxN)]
    h0_BxDxN = jnp.zeros((batch, dim, n_state), f32)
    _, y_LxBxD = jax.lax.scan(step, h0_BxDxN, time_major)
    return jnp.swapaxes(y_LxBxD, 0, 1).astype(x_BxLxD.dtype)


def selective_scan(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN, *, impl: str = "auto"):
    """Selective scan h_t = exp(dt_t A) h_{t-1} + (dt_t x_t) B_t, y_t = sum_n h_t[:, n] C_t[n].

    h_0 = 0.

    x, dt: [B, L, D]; A: [D, N]; B, C: [B, L, N] -> y [B, L, D] in x.dtype (float32 accumulation).
    No skip connection (D * x) and no gating: the layer adds those. `impl` picks the Pallas kernel
    or the associative-scan reference (see `mad_jax.ops.dispatch`).
    """
    choice, forced = dispatch.resolve_impl(impl, "selective_scan")
    if choice == "pallas":
        import pallas_kernels

        try:
            return pallas_kernels.selective_scan(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN)
        except pallas_kernels.UnsupportedShapeError:
            if forced:
                raise
    return associative_selective_scan(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN)

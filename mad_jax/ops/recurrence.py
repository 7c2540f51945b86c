"""Diagonal linear recurrence h_t = a_t * h_{t-1} + b_t: the state update of the LRU family
(RG-LRU in Hawk / Griffin, and any layer whose state is one number per channel).

Elementwise over every channel, with h_0 = h0 (zero when not given):
    h_t = a_t * h_{t-1} + b_t,      t = 1..L.
The pairs (a, b) compose associatively, (a_l, b_l) then (a_r, b_r) = (a_l a_r, a_r b_l + b_r), so
`linear_recurrence` runs in O(log L) depth with `lax.associative_scan`;
`linear_recurrence_sequential` is the same recurrence as a `lax.scan` over time (the oracle). Both
compute in float32 whatever the input dtype: a bf16 state would lose the slowly decaying memory
(a_t near 1) within a few steps.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _checked_float32(a_BxLxD, b_BxLxD, h0):
    """a, b and h0 (zeros when None) in float32, after checking their shapes."""
    if a_BxLxD.shape != b_BxLxD.shape or a_BxLxD.ndim < 2:
        raise ValueError(f"a and b must share one shape [B, L, ...]; got {a_BxLxD.shape} and "
                         f"{b_BxLxD.shape}")
    state_shape = a_BxLxD.shape[:1] + a_BxLxD.shape[2:]
    if h0 is None:
        h0 = jnp.zeros(state_shape, jnp.float32)
    elif h0.shape != state_shape:
        raise ValueError(f"h0 must have shape {state_shape} ([B, ...] of a); got {h0.shape}")
    return a_BxLxD.astype(jnp.float32), b_BxLxD.astype(jnp.float32), h0.astype(jnp.float32)


# Jitted: called eagerly (a layer's un-jitted `init`), the scan's many small ops would each be
# dispatched and compiled on their own; under an outer jit this is inlined.
@jax.jit
def linear_recurrence(a_BxLxD, b_BxLxD, *, h0=None):
    """All states h_t = a_t * h_{t-1} + b_t (h_0 = h0, or 0) by an associative scan over time.

    a, b: [B, L, ...] (same shape); h0: [B, ...] or None. Returns h [B, L, ...] in the promoted
    dtype of a and b, computed in float32.
    """
    out_dtype = jnp.result_type(a_BxLxD, b_BxLxD)
    a, b, h0_BxD = _checked_float32(a_BxLxD, b_BxLxD, h0)
    if h0 is not None:  # h_1 = a_1 h0 + b_1: the scan then starts from zero
        b = b.at[:, 0].add(a[:, 0] * h0_BxD)

    def combine(left, right):
        a_l, b_l = left
        a_r, b_r = right
        return a_l * a_r, a_r * b_l + b_r

    _, h_BxLxD = jax.lax.associative_scan(combine, (a, b), axis=1)
    return h_BxLxD.astype(out_dtype)


@jax.jit
def linear_recurrence_sequential(a_BxLxD, b_BxLxD, *, h0=None):
    """The same recurrence as a lax.scan over time (O(L) steps; the test oracle)."""
    out_dtype = jnp.result_type(a_BxLxD, b_BxLxD)
    a, b, h0_BxD = _checked_float32(a_BxLxD, b_BxLxD, h0)

    def step(h_BxD, inputs):
        a_BxD, b_BxD = inputs
        h_BxD = a_BxD * h_BxD + b_BxD
        return h_BxD, h_BxD

    _, h_LxBxD = jax.lax.scan(step, h0_BxD, (jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)))
    return jnp.swapaxes(h_LxBxD, 0, 1).astype(out_dtype)

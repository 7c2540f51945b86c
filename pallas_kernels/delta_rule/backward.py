"""Backward pass of the delta rule: autodiff through a pure-jnp chunked form of the same math.

There is no backward kernel yet: the custom VJP recomputes the forward pass with `chunked_jnp`
(the WY / UT transform of forward.py, batched over chunks with XLA matmuls, the unit-triangular
inverse as a product of log2(C) matmuls, the state carried by a lax.scan over chunks) and
differentiates that. Gate spans are masked sums of same-sign terms, as in the kernel, so every
exponent is <= 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

f32 = jnp.float32
_HIGHEST = lax.Precision.HIGHEST


def unit_lower_inverse(m):
    """(I + M)^{-1} for strictly lower-triangular M [..., C, C]: M is nilpotent (M^C = 0), so
    (I + M)^{-1} = (I - M)(I + M^2)(I + M^4)... with log2(C) squarings (all matmuls)."""
    chunk = m.shape[-1]
    eye = jnp.eye(chunk, dtype=f32)
    inv, power, span = eye - m, m, 2
    while span < chunk:
        power = jnp.matmul(power, power, precision=_HIGHEST)
        inv = jnp.matmul(inv, eye + power, precision=_HIGHEST)
        span *= 2
    return inv


def chunked_jnp(q, k, v, beta, g, *, chunk):
    """q, k [BH, Lp, K]; v [BH, Lp, V]; beta, g [BH, Lp] (g None: no gate), Lp a multiple of
    `chunk`, float32 -> o [BH, Lp, V] float32."""
    bh, seq_len, dk = q.shape
    dv = v.shape[2]
    n = seq_len // chunk

    def chunks(a):  # [BH, Lp, ...] -> [BH, N, C, ...]
        return a.reshape((bh, n, chunk) + a.shape[2:])

    q, k, v, beta = chunks(q), chunks(k), chunks(v), chunks(beta)
    pos = jnp.arange(chunk)
    t_, i_, r_ = pos[:, None, None], pos[None, :, None], pos[None, None, :]
    lower_CxC = pos[:, None] >= pos[None, :]
    if g is None:
        ratio = jnp.broadcast_to(lower_CxC.astype(f32), (bh, n, chunk, chunk))
        gamma = jnp.ones((bh, n, chunk), f32)
    else:
        g = chunks(g)
        in_span = ((i_ < r_) & (r_ <= t_)).astype(f32)                  # [t, i, r]: r in (i, t]
        span = jnp.einsum("bnr,tir->bnti", g, in_span, precision=_HIGHEST)
        ratio = jnp.where(lower_CxC, jnp.exp(span), 0.0)
        gamma = jnp.exp(jnp.einsum("bnr,tr->bnt", g, lower_CxC.astype(f32), precision=_HIGHEST))
    kk = jnp.einsum("bntk,bnik->bnti", k, k, precision=_HIGHEST)
    m = jnp.where(pos[:, None] > pos[None, :], beta[..., :, None] * kk * ratio, 0.0)
    rhs = jnp.concatenate([(beta * gamma)[..., None] * k, beta[..., None] * v], axis=-1)
    wu = jnp.einsum("bnti,bnix->bntx", unit_lower_inverse(m), rhs, precision=_HIGHEST)
    w, u0 = wu[..., :dk], wu[..., dk:]
    scores = jnp.einsum("bntk,bnik->bnti", q, k, precision=_HIGHEST) * ratio
    q_start = gamma[..., None] * q
    k_end = ratio[..., -1, :, None] * k
    gamma_end = gamma[..., -1]

    def carry(s, xs):
        w, u0, scores, q_start, k_end, gamma_end = xs
        u = u0 - jnp.einsum("bck,bkv->bcv", w, s, precision=_HIGHEST)
        o = (jnp.einsum("bck,bkv->bcv", q_start, s, precision=_HIGHEST)
             + jnp.einsum("bts,bsv->btv", scores, u, precision=_HIGHEST))
        s = gamma_end[:, None, None] * s + jnp.einsum("bck,bcv->bkv", k_end, u,
                                                      precision=_HIGHEST)
        return s, o

    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (w, u0, scores, q_start, k_end, gamma_end))
    _, o = lax.scan(carry, jnp.zeros((bh, dk, dv), f32), xs)
    return jnp.moveaxis(o, 0, 1).reshape(bh, seq_len, dv)


def backward_jnp(q, k, v, beta, g, do, *, chunk):
    """Gradients (dq, dk, dv, dbeta, dg) of `chunked_jnp` (float32, padded shapes) at cotangent
    do; dg is None when g is None."""
    if g is None:
        _, vjp = jax.vjp(lambda *a: chunked_jnp(*a, None, chunk=chunk), q, k, v, beta)
        return vjp(do) + (None,)
    _, vjp = jax.vjp(lambda *a: chunked_jnp(*a, chunk=chunk), q, k, v, beta, g)
    return vjp(do)

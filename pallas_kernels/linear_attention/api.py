"""Public entry point of the linear-attention kernel, with its custom VJP."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import _common
from pallas_kernels.linear_attention import backward, forward
from pallas_kernels.linear_attention.config import LinearAttentionConfig

f32 = jnp.float32


def linear_attention(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, log_decay_BxHxLxK=None, bonus_HxK=None, *,
                     interpret=False, config: LinearAttentionConfig | None = None):
    """Linear attention with optional per-channel decay (GLA), per batch and head:

        S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,    o_t = q_t S_t,    S_0 = 0 (S is [K, V])

    q, k: [B, H, L, K]; v: [B, H, L, V]; log_decay g: [B, H, L, K] (<= 0) or None (no decay).
    Returns [B, H, L, V] in q.dtype, accumulated in float32. Any L, K, V (padded inside);
    float32 / bfloat16. Differentiable (q, k, v, log_decay) through a backward kernel.
    The RWKV current-token bonus is not supported: `bonus_HxK` raises UnsupportedShapeError, as
    does a TPU target (GPU kernel only) and CPU without `interpret`.
    """
    config = config or LinearAttentionConfig()
    if interpret is not False:
        config = dataclasses.replace(config, interpret=interpret)
    if bonus_HxK is not None:
        raise _common.UnsupportedShapeError(
            "linear_attention kernel has no RWKV bonus; use the XLA reference for bonus_HxK")
    _check_shapes(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, log_decay_BxHxLxK)
    target = _common.resolve_target(config.target, config.interpret)
    if target != "gpu":
        raise _common.UnsupportedShapeError(
            f"linear_attention has no {target} kernel; use the XLA reference there")
    plan = _common.chunk_plan(config, q_BxHxLxK.shape, v_BxHxLxV.shape[-1])
    return _linear_attention(config, plan, q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, log_decay_BxHxLxK)


def _check_shapes(q, k, v, g):
    if q.ndim != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, H, L, K], got {q.shape} and {k.shape}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, H, L, V] with B, H, L = {q.shape[:3]}, got {v.shape}")
    if g is not None and g.shape != q.shape:
        raise ValueError(f"log_decay must be [B, H, L, K] = {q.shape}, got {g.shape}")
    for name, a in (("q", q), ("k", k), ("v", v), ("log_decay", g)):
        if a is not None:
            _common.check_float(name, a)


def _flat(plan: _common.ChunkPlan, a, width_p):
    """[B, H, L, X] -> [B*H, Lp, Xp], zero-padded (zero q, k, v and log decay add nothing)."""
    a = a.reshape((-1,) + a.shape[2:])
    a = _common.pad_axis(a, 1, 0, plan.seq_len_p - plan.seq_len)
    return _common.pad_axis(a, 2, 0, width_p - a.shape[2])


def _pad(plan, q, k, v, g):
    g_p = None if g is None else _flat(plan, g.astype(f32), plan.dk_p)
    return _flat(plan, q, plan.dk_p), _flat(plan, k, plan.dk_p), g_p, _flat(plan, v, plan.dv_p)


def _kernel_kwargs(config, plan):
    return dict(config=config, block_v=plan.block_v,
                precision=_common.dot_precision(config.precision, config.interpret))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _linear_attention(config, plan, q, k, v, g):
    return _forward(config, plan, q, k, v, g, save_states=False)[0]


def _forward(config, plan, q, k, v, g, *, save_states):
    q_p, k_p, g_p, v_p = _pad(plan, q, k, v, g)
    o, states = forward.forward_gpu(q_p, k_p, g_p, v_p, save_states=save_states,
                                    **_kernel_kwargs(config, plan))
    o = o[:, :plan.seq_len, :plan.dv].reshape(q.shape[:3] + (plan.dv,))
    return o, states


def _linear_attention_fwd(config, plan, q, k, v, g):
    o, states = _forward(config, plan, q, k, v, g, save_states=True)
    return o, (q, k, v, g, states)


def _linear_attention_bwd(config, plan, residuals, do):
    q, k, v, g, states = residuals
    q_p, k_p, g_p, v_p = _pad(plan, q, k, v, g)
    do_p = _flat(plan, do.astype(v.dtype), plan.dv_p)
    dq, dk, dv = backward.backward_gpu(q_p, k_p, g_p, v_p, do_p, states,
                                       **_kernel_kwargs(config, plan))
    L, K, V = plan.seq_len, plan.dk, plan.dv

    def unflat(a, width):
        return a[:, :L, :width].reshape(q.shape[:3] + (width,))

    dq, dk = unflat(jnp.sum(dq, axis=1), K), unflat(jnp.sum(dk, axis=1), K)
    dg = None
    if g is not None:
        # Shifting all of G_t = sum_{r<=t} g_r by one amount leaves the output unchanged, so
        # dL/dG_t = q_t dq_t - k_t dk_t, and dg_t sums that over r >= t.
        dG = q.astype(f32) * dq - k.astype(f32) * dk
        dg = jnp.flip(jnp.cumsum(jnp.flip(dG, axis=2), axis=2), axis=2).astype(g.dtype)
    return dq.astype(q.dtype), dk.astype(k.dtype), unflat(dv, V), dg


_linear_attention.defvjp(_linear_attention_fwd, _linear_attention_bwd)

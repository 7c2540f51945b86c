"""Public entry point of the delta-rule kernel, with its custom VJP."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import _common
from pallas_kernels.delta_rule import backward, forward
from pallas_kernels.delta_rule.config import DeltaRuleConfig

f32 = jnp.float32


def delta_rule(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, beta_BxHxL, log_gate_BxHxL=None, *,
               interpret=False, config: DeltaRuleConfig | None = None):
    """The (gated) delta rule, per batch and head (S is [K, V], S_0 = 0):

        S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,    o_t = q_t^T S_t

    q, k: [B, H, L, K] (k normalised by the caller); v: [B, H, L, V]; beta: [B, H, L];
    log_gate g: [B, H, L] (<= 0) or None (no gate). Returns [B, H, L, V] in q.dtype, float32
    inside. Any L, K, V (padded inside); float32 / bfloat16. Differentiable in every input: the
    backward pass recomputes through a pure-jnp chunked form (backward.py), not a kernel.
    Raises UnsupportedShapeError for a TPU target (GPU kernel only) and CPU without `interpret`.
    """
    config = config or DeltaRuleConfig()
    if interpret is not False:
        config = dataclasses.replace(config, interpret=interpret)
    _check_shapes(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, beta_BxHxL, log_gate_BxHxL)
    target = _common.resolve_target(config.target, config.interpret)
    if target != "gpu":
        raise _common.UnsupportedShapeError(
            f"delta_rule has no {target} kernel; use the XLA reference there")
    plan = _common.chunk_plan(config, q_BxHxLxK.shape, v_BxHxLxV.shape[-1])
    return _delta_rule(config, plan, q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, beta_BxHxL,
                       log_gate_BxHxL)


def _check_shapes(q, k, v, beta, g):
    if q.ndim != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, H, L, K], got {q.shape} and {k.shape}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, H, L, V] with B, H, L = {q.shape[:3]}, got {v.shape}")
    for name, a in (("beta", beta), ("log_gate", g)):
        if a is not None and a.shape != q.shape[:3]:
            raise ValueError(f"{name} must be [B, H, L] = {q.shape[:3]}, got {a.shape}")
    for name, a in (("q", q), ("k", k), ("v", v), ("beta", beta), ("log_gate", g)):
        if a is not None:
            _common.check_float(name, a)


def _flat(plan: _common.ChunkPlan, a, width_p=None):
    """[B, H, L(, X)] -> [B*H, Lp(, Xp)], zero-padded (padded steps have beta = 0 and g = 0, so
    they leave the state unchanged; padded channels are zero)."""
    a = a.reshape((-1,) + a.shape[2:])
    a = _common.pad_axis(a, 1, 0, plan.seq_len_p - plan.seq_len)
    return a if width_p is None else _common.pad_axis(a, 2, 0, width_p - a.shape[2])


def _pad(plan, q, k, v, beta, g):
    return (_flat(plan, q, plan.dk_p), _flat(plan, k, plan.dk_p), _flat(plan, beta.astype(f32)),
            None if g is None else _flat(plan, g.astype(f32)), _flat(plan, v, plan.dv_p))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _delta_rule(config, plan, q, k, v, beta, g):
    q_p, k_p, beta_p, g_p, v_p = _pad(plan, q, k, v, beta, g)
    o = forward.forward_gpu(q_p, k_p, beta_p, g_p, v_p, config=config, block_v=plan.block_v,
                            precision=_common.dot_precision(config.precision, config.interpret))
    return o[:, :plan.seq_len, :plan.dv].reshape(q.shape[:3] + (plan.dv,))


def _delta_rule_fwd(config, plan, q, k, v, beta, g):
    return _delta_rule(config, plan, q, k, v, beta, g), (q, k, v, beta, g)


def _delta_rule_bwd(config, plan, residuals, do):
    q, k, v, beta, g = residuals
    padded = [None if a is None else a.astype(f32) for a in _pad(plan, q, k, v, beta, g)]
    q_p, k_p, beta_p, g_p, v_p = padded
    do_p = _flat(plan, do.astype(f32), plan.dv_p)
    dq, dk, dv, dbeta, dg = backward.backward_jnp(q_p, k_p, v_p, beta_p, g_p, do_p,
                                                  chunk=config.chunk)
    L = plan.seq_len
    lead = q.shape[:3]

    def unflat(a, width, like):
        if a is None:
            return None
        a = a[:, :L] if width is None else a[:, :L, :width]
        return a.reshape(lead + a.shape[2:]).astype(like.dtype)

    return (unflat(dq, plan.dk, q), unflat(dk, plan.dk, k), unflat(dv, plan.dv, v),
            unflat(dbeta, None, beta), unflat(dg, None, g))


_delta_rule.defvjp(_delta_rule_fwd, _delta_rule_bwd)

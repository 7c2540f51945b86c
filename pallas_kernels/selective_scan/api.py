"""Public entry point of the selective-scan kernel, with its custom VJP."""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels import _common
from pallas_kernels.selective_scan import backward, forward, tpu
from pallas_kernels.selective_scan.config import SelectiveScanConfig


def selective_scan(x, dt, A, B, C, *, interpret=False, config: SelectiveScanConfig | None = None):
    """Selective scan h_t = exp(dt_t A) h_{t-1} + (dt_t x_t) B_t, y_t = sum_n h_t[:, n] C_t[n].

    h_0 = 0. x, dt: [B, L, D]; A: [D, N]; B, C: [B, L, N] -> y [B, L, D] in x.dtype, accumulated
    in float32. Any L, D, N (padded inside); float32 / bfloat16 inputs. Differentiable through a
    backward kernel.
    `interpret` overrides `config.interpret` (True, or `pltpu.InterpretParams()`).
    Raises UnsupportedShapeError where no kernel applies (e.g. on CPU without interpret).
    """
    config = config or SelectiveScanConfig()
    if interpret is not False:
        config = dataclasses.replace(config, interpret=interpret)
    _check_shapes(x, dt, A, B, C)
    target = _common.resolve_target(config.target, config.interpret)
    return _selective_scan(config, _plan(config, target, x.shape, A.shape[1]), x, dt, A, B, C)


def _check_shapes(x, dt, A, B, C):
    if x.ndim != 3 or dt.shape != x.shape:
        raise ValueError(f"x and dt must both be [B, L, D], got {x.shape} and {dt.shape}")
    batch, seq_len, dim = x.shape
    if A.ndim != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be [D, N] with D={dim}, got {A.shape}")
    n_state = A.shape[1]
    for name, a in (("B", B), ("C", C)):
        if a.shape != (batch, seq_len, n_state):
            raise ValueError(
                f"{name} must be [B, L, N] = {(batch, seq_len, n_state)}, got {a.shape}")
    for name, a in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        _common.check_float(name, a)


class _Plan(NamedTuple):
    """Kernel geometry: padded sizes and tiles (hashable: a static argument of the custom VJP)."""
    target: str
    seq_len: int
    dim: int
    n_state: int
    seq_len_p: int
    dim_p: int
    n_state_p: int
    block_d: int
    block_t: int   # TPU: time steps per grid step
    chunk: int     # steps per unrolled group = checkpoint spacing


def _plan(config, target, x_shape, n_state) -> _Plan:
    _, seq_len, dim = x_shape
    if target == "gpu":
        bd, chunk = min(config.block_d, _common.next_power_of_2(dim)), config.chunk
        seq_len_p = _common.round_up(seq_len, chunk)
        return _Plan(target, seq_len, dim, n_state, seq_len_p, _common.round_up(dim, bd),
                     _common.next_power_of_2(n_state), bd, seq_len_p, chunk)
    native = not config.interpret
    chunk = config.tpu_chunk
    bd = min(config.tpu_block_d, max(_common.next_power_of_2(dim), 128 if native else 1))
    if native and bd % 128:
        raise _common.UnsupportedShapeError(f"TPU kernel needs tpu_block_d % 128 == 0, got {bd}")
    # Time blocks are lane-dim blocks of B^T, C^T: tpu_block_t, or all of L when L is shorter.
    block_t = min(config.tpu_block_t, _common.round_up(seq_len, chunk))
    return _Plan(target, seq_len, dim, n_state, _common.round_up(seq_len, block_t),
                 _common.round_up(dim, bd), _common.round_up(n_state, 8), bd, block_t, chunk)


def _pad(plan: _Plan, x, dt, A, B, C):
    """Pads to the plan (zero dt keeps the state, zero B/C rows add and read nothing)."""
    pad_l, pad_d, pad_n = (plan.seq_len_p - plan.seq_len, plan.dim_p - plan.dim,
                           plan.n_state_p - plan.n_state)

    def seq(a):
        return _common.pad_axis(_common.pad_axis(a, 1, 0, pad_l), 2, 0, pad_d)

    def state(a):
        a = _common.pad_axis(_common.pad_axis(a, 1, 0, pad_l), 2, 0, pad_n)
        return jnp.swapaxes(a, 1, 2) if plan.target == "tpu" else a

    at = _common.pad_axis(_common.pad_axis(A.astype(jnp.float32).T, 0, 0, pad_n), 1, 0, pad_d)
    return seq(x), seq(dt), at, state(B), state(C)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _selective_scan(config, plan, x, dt, A, B, C):
    return _forward(config, plan, x, dt, A, B, C, save_states=False)[0]


def _forward(config, plan, x, dt, A, B, C, *, save_states):
    padded = _pad(plan, x, dt, A, B, C)
    if plan.target == "tpu":
        y, states = tpu.forward_tpu(*padded, block_d=plan.block_d, block_t=plan.block_t,
                                    chunk=plan.chunk, save_states=save_states,
                                    interpret=config.interpret)
    else:
        kconfig = dataclasses.replace(config, block_d=plan.block_d, chunk=plan.chunk)
        y, states = forward.forward_gpu(*padded, config=kconfig, save_states=save_states)
    return y[:, :plan.seq_len, :plan.dim], states


def _selective_scan_fwd(config, plan, x, dt, A, B, C):
    y, states = _forward(config, plan, x, dt, A, B, C, save_states=True)
    return y, (x, dt, A, B, C, states)


def _selective_scan_bwd(config, plan, residuals, dy):
    x, dt, A, B, C, states = residuals
    padded = _pad(plan, x, dt, A, B, C)
    dy_p = _common.pad_axis(dy.astype(x.dtype), 1, 0, plan.seq_len_p - plan.seq_len)
    dy_p = _common.pad_axis(dy_p, 2, 0, plan.dim_p - plan.dim)
    if plan.target == "tpu":
        dx, ddt, dat, db, dc = tpu.backward_tpu(*padded, dy_p, states, block_d=plan.block_d,
                                                block_t=plan.block_t, chunk=plan.chunk,
                                                interpret=config.interpret)
        db, dc = jnp.swapaxes(db, 2, 3), jnp.swapaxes(dc, 2, 3)
    else:
        kconfig = dataclasses.replace(config, block_d=plan.block_d, chunk=plan.chunk)
        dx, ddt, dat, db, dc = backward.backward_gpu(*padded, dy_p, states, config=kconfig)
    L, D, N = plan.seq_len, plan.dim, plan.n_state
    dA = jnp.sum(dat, axis=0).T[:D, :N]
    db = jnp.sum(db, axis=1)[:, :L, :N]
    dc = jnp.sum(dc, axis=1)[:, :L, :N]
    return (dx[:, :L, :D], ddt[:, :L, :D], dA.astype(A.dtype), db.astype(B.dtype),
            dc.astype(C.dtype))


_selective_scan.defvjp(_selective_scan_fwd, _selective_scan_bwd)

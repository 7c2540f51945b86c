"""Backward selective-scan kernel: a reverse-time scan of the state adjoint per channel block.

With a_t = exp(dt_t A) and G_t = dL/dh_t = C_t dy_t + a_{t+1} G_{t+1}:
    dx_t = dt_t * sum_n G_t B_t      dB_t = sum_d G_t dt_t x_t      dC_t = sum_d dy_t h_t
    ddt_t = sum_n G_t a_t h_{t-1} A + x_t sum_n G_t B_t         dA = sum_t G_t a_t h_{t-1} dt_t
Chunks are visited last to first; each recomputes its states from the saved chunk-start state and
keeps them in registers while stepping back through the chunk. dB, dC and dA come out as partial
sums per channel block (and per batch row for dA), summed by the caller.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.selective_scan.config import SelectiveScanConfig
from pallas_kernels.selective_scan.forward import scan_step

f32 = jnp.float32


def _backward_kernel(x_ref, dt_ref, at_ref, b_ref, c_ref, dy_ref, ckpt_ref,
                     dx_ref, ddt_ref, dat_ref, db_ref, dc_ref, *, chunk, n_chunks):
    at_NxD = at_ref[...].astype(f32)

    def chunk_body(step, carry):
        g_next_NxD, dat_NxD = carry  # g_next = a_{t+1} G_{t+1}
        c = n_chunks - 1 - step
        t0 = c * chunk
        h_NxD = ckpt_ref[c]
        states = [h_NxD]
        rows = []
        for i in range(chunk):
            t = t0 + i
            x_D, dt_D, b_N = (x_ref[t, :].astype(f32), dt_ref[t, :].astype(f32),
                              b_ref[t, :].astype(f32))
            h_NxD = scan_step(h_NxD, x_D, dt_D, at_NxD, b_N)
            states.append(h_NxD)
            rows.append((x_D, dt_D, b_N))
        for i in reversed(range(chunk)):
            t = t0 + i
            x_D, dt_D, b_N = rows[i]
            dy_D = dy_ref[t, :].astype(f32)
            c_N = c_ref[t, :].astype(f32)
            g_NxD = c_N[:, None] * dy_D[None, :] + g_next_NxD
            decay_NxD = jnp.exp(dt_D[None, :] * at_NxD)
            gb_D = jnp.sum(g_NxD * b_N[:, None], axis=0)
            dlog_NxD = g_NxD * decay_NxD * states[i]          # dL/d(dt_t A)
            dx_ref[t, :] = (gb_D * dt_D).astype(dx_ref.dtype)
            ddt_ref[t, :] = (jnp.sum(dlog_NxD * at_NxD, axis=0) + gb_D * x_D).astype(ddt_ref.dtype)
            db_ref[t, :] = jnp.sum(g_NxD * (dt_D * x_D)[None, :], axis=1)
            dc_ref[t, :] = jnp.sum(states[i + 1] * dy_D[None, :], axis=1)
            dat_NxD = dat_NxD + dlog_NxD * dt_D[None, :]
            g_next_NxD = g_NxD * decay_NxD
        return g_next_NxD, dat_NxD

    zeros = jnp.zeros(at_NxD.shape, f32)
    _, dat_NxD = lax.fori_loop(0, n_chunks, chunk_body, (zeros, zeros))
    dat_ref[...] = dat_NxD


def backward_gpu(x, dt, at, b, c, dy, states, *, config: SelectiveScanConfig):
    """Padded operands as in `forward_gpu`, dy [B, Lp, Dp], states [B, Lp/chunk, Np, Dp].

    Returns dx, ddt [B, Lp, Dp] (dtypes of x, dt), dat [B, Np, Dp] float32 (per batch row),
    db, dc [B, Dp/block_d, Lp, Np] float32 (per channel block).
    """
    batch, seq_len, dim = x.shape
    n_state = at.shape[0]
    bd, chunk = config.block_d, config.chunk
    n_chunks = seq_len // chunk
    n_blocks = dim // bd
    seq_spec = pl.BlockSpec((None, seq_len, bd), lambda i, j: (i, 0, j))
    state_spec = pl.BlockSpec((None, seq_len, n_state), lambda i, j: (i, 0, 0))
    partial_spec = pl.BlockSpec((None, None, seq_len, n_state), lambda i, j: (i, j, 0, 0))
    kernel = functools.partial(_backward_kernel, chunk=chunk, n_chunks=n_chunks)
    return pl.pallas_call(
        kernel,
        out_shape=[
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            jax.ShapeDtypeStruct(dt.shape, dt.dtype),
            jax.ShapeDtypeStruct((batch, n_state, dim), f32),
            jax.ShapeDtypeStruct((batch, n_blocks, seq_len, n_state), f32),
            jax.ShapeDtypeStruct((batch, n_blocks, seq_len, n_state), f32),
        ],
        grid=(batch, n_blocks),
        in_specs=[seq_spec, seq_spec, pl.BlockSpec((n_state, bd), lambda i, j: (0, j)),
                  state_spec, state_spec, seq_spec,
                  pl.BlockSpec((None, n_chunks, n_state, bd), lambda i, j: (i, 0, 0, j))],
        out_specs=[seq_spec, seq_spec, pl.BlockSpec((None, n_state, bd), lambda i, j: (i, 0, j)),
                   partial_spec, partial_spec],
        compiler_params=pltriton.CompilerParams(num_warps=config.num_warps_bwd,
                                                num_stages=config.num_stages),
        interpret=config.interpret,
        name="selective_scan_bwd",
    )(x, dt, at, b, c, dy, states)

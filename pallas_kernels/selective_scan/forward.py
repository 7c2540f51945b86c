"""Forward selective-scan kernel: a sequential scan over time per (batch, channel block).

The state h [N, block_d] lives in registers for the whole sequence; time advances `chunk` steps per
loop iteration (unrolled, so the chunk's row loads are issued together). Optionally the state at the
start of every chunk is written out for the backward pass.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.selective_scan.config import SelectiveScanConfig

f32 = jnp.float32


def scan_step(h_NxD, x_D, dt_D, at_NxD, b_N):
    """One step of h_t = exp(dt_t A) h_{t-1} + (dt_t x_t) B_t on a [N, D] state (float32)."""
    decay_NxD = jnp.exp(dt_D[None, :] * at_NxD)
    return decay_NxD * h_NxD + b_N[:, None] * (dt_D * x_D)[None, :]


def _forward_kernel(x_ref, dt_ref, at_ref, b_ref, c_ref, y_ref, *ckpt_refs, chunk, n_chunks):
    # x_ref, dt_ref, y_ref: [Lp, bd]; at_ref: [Np, bd]; b_ref, c_ref: [Lp, Np]; ckpt: [nC, Np, bd].
    at_NxD = at_ref[...].astype(f32)

    def chunk_body(c, h_NxD):
        if ckpt_refs:
            ckpt_refs[0][c] = h_NxD
        t0 = c * chunk
        for i in range(chunk):
            t = t0 + i
            h_NxD = scan_step(h_NxD, x_ref[t, :].astype(f32), dt_ref[t, :].astype(f32), at_NxD,
                              b_ref[t, :].astype(f32))
            y_D = jnp.sum(h_NxD * c_ref[t, :].astype(f32)[:, None], axis=0)
            y_ref[t, :] = y_D.astype(y_ref.dtype)
        return h_NxD

    lax.fori_loop(0, n_chunks, chunk_body, jnp.zeros(at_NxD.shape, f32))


def forward_gpu(x, dt, at, b, c, *, config: SelectiveScanConfig, save_states: bool):
    """Padded operands: x, dt [B, Lp, Dp]; at [Np, Dp] float32; b, c [B, Lp, Np].

    Returns y [B, Lp, Dp] (x.dtype) and, if `save_states`, the chunk-start states
    [B, Lp/chunk, Np, Dp] float32.
    """
    batch, seq_len, dim = x.shape
    n_state = at.shape[0]
    bd, chunk = config.block_d, config.chunk
    n_chunks = seq_len // chunk
    seq_spec = pl.BlockSpec((None, seq_len, bd), lambda i, j: (i, 0, j))
    state_spec = pl.BlockSpec((None, seq_len, n_state), lambda i, j: (i, 0, 0))
    out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype)]
    out_specs = [seq_spec]
    if save_states:
        out_shape.append(jax.ShapeDtypeStruct((batch, n_chunks, n_state, dim), f32))
        out_specs.append(pl.BlockSpec((None, n_chunks, n_state, bd), lambda i, j: (i, 0, 0, j)))
    kernel = functools.partial(_forward_kernel, chunk=chunk, n_chunks=n_chunks)
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(batch, dim // bd),
        in_specs=[seq_spec, seq_spec, pl.BlockSpec((n_state, bd), lambda i, j: (0, j)),
                  state_spec, state_spec],
        out_specs=out_specs,
        compiler_params=pltriton.CompilerParams(num_warps=config.num_warps,
                                                num_stages=config.num_stages),
        interpret=config.interpret,
        name="selective_scan_fwd",
    )(x, dt, at, b, c)
    return (outs[0], outs[1]) if save_states else (outs[0], None)

"""Selective-scan kernels for TPU (Mosaic lowering): forward and backward.

Same recurrence and gradients as the GPU kernels (forward.py, backward.py), laid out for the TPU
vector unit: the state is [N, block_d] (channels on lanes), time runs over an "arbitrary" grid axis
with the state carried in VMEM scratch, and inside a grid step over groups of `chunk` (= 8) steps.
B and C come transposed ([B, N, L]) so that step t's column is a static lane slice of the group's
tile after a dynamic lane roll; y / dx / ddt rows of a group are stored as one aligned slab.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

f32 = jnp.float32


def _group_columns(ref, t0, block_t, chunk):
    """Columns t0 .. t0+chunk-1 of a [N, block_t] ref as a [N, chunk] value (roll, then slice)."""
    tile = ref[...].astype(f32)
    return pltpu.roll(tile, lax.rem(block_t - t0, block_t), 1)[:, :chunk]


def _forward_kernel(x_ref, dt_ref, at_ref, bt_ref, ct_ref, y_ref, *rest, block_t, chunk, save):
    ckpt_ref, h_scr = (rest[0], rest[1]) if save else (None, rest[0])

    @pl.when(pl.program_id(2) == 0)
    def _():
        h_scr[...] = jnp.zeros_like(h_scr)

    at_NxD = at_ref[...].astype(f32)

    def group(g, h_NxD):
        t0 = pl.multiple_of(g * chunk, chunk)
        if save:
            ckpt_ref[g] = h_NxD
        x_GxD = x_ref[pl.ds(t0, chunk), :].astype(f32)
        dt_GxD = dt_ref[pl.ds(t0, chunk), :].astype(f32)
        b_NxG = _group_columns(bt_ref, t0, block_t, chunk)
        c_NxG = _group_columns(ct_ref, t0, block_t, chunk)
        rows = []
        for i in range(chunk):
            dt_1xD = dt_GxD[i:i + 1]
            h_NxD = (jnp.exp(dt_1xD * at_NxD) * h_NxD
                     + b_NxG[:, i:i + 1] * (dt_1xD * x_GxD[i:i + 1]))
            rows.append(jnp.sum(h_NxD * c_NxG[:, i:i + 1], axis=0, keepdims=True))
        y_ref[pl.ds(t0, chunk), :] = jnp.concatenate(rows, axis=0).astype(y_ref.dtype)
        return h_NxD

    h_scr[...] = lax.fori_loop(0, block_t // chunk, group, h_scr[...])


def forward_tpu(x, dt, at, bt, ct, *, block_d, block_t, chunk, save_states, interpret):
    """x, dt [B, Lp, Dp]; at [Np, Dp]; bt, ct [B, Np, Lp] -> y [B, Lp, Dp] (+ states
    [B, Lp/chunk, Np, Dp] float32 at the start of every group, if `save_states`)."""
    batch, seq_len, dim = x.shape
    n_state = at.shape[0]
    seq_spec = pl.BlockSpec((None, block_t, block_d), lambda b, j, c: (b, c, j))
    col_spec = pl.BlockSpec((None, n_state, block_t), lambda b, j, c: (b, 0, c))
    out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype)]
    out_specs = [seq_spec]
    if save_states:
        out_shape.append(jax.ShapeDtypeStruct((batch, seq_len // chunk, n_state, dim), f32))
        out_specs.append(pl.BlockSpec((None, block_t // chunk, n_state, block_d),
                                      lambda b, j, c: (b, c, 0, j)))
    kernel = functools.partial(_forward_kernel, block_t=block_t, chunk=chunk, save=save_states)
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(batch, dim // block_d, seq_len // block_t),
        in_specs=[seq_spec, seq_spec, pl.BlockSpec((n_state, block_d), lambda b, j, c: (0, j)),
                  col_spec, col_spec],
        out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM((n_state, block_d), f32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="selective_scan_fwd",
    )(x, dt, at, bt, ct)
    return (outs[0], outs[1]) if save_states else (outs[0], None)


def _backward_kernel(x_ref, dt_ref, at_ref, bt_ref, ct_ref, dy_ref, ckpt_ref,
                     dx_ref, ddt_ref, dat_ref, dbt_ref, dct_ref, g_scr, *, block_t, chunk):
    @pl.when(pl.program_id(2) == 0)
    def _():
        g_scr[...] = jnp.zeros_like(g_scr)
        dat_ref[...] = jnp.zeros_like(dat_ref)

    at_NxD = at_ref[...].astype(f32)
    n_groups = block_t // chunk
    lane = lax.broadcasted_iota(jnp.int32, (at_NxD.shape[0], block_t), 1)

    def group(step, carry):
        g_next_NxD, dat_NxD, db_NxT, dc_NxT = carry
        g = n_groups - 1 - step
        t0 = pl.multiple_of(g * chunk, chunk)
        x_GxD = x_ref[pl.ds(t0, chunk), :].astype(f32)
        dt_GxD = dt_ref[pl.ds(t0, chunk), :].astype(f32)
        dy_GxD = dy_ref[pl.ds(t0, chunk), :].astype(f32)
        b_NxG = _group_columns(bt_ref, t0, block_t, chunk)
        c_NxG = _group_columns(ct_ref, t0, block_t, chunk)
        states = [ckpt_ref[g]]
        for i in range(chunk):
            dt_1xD = dt_GxD[i:i + 1]
            states.append(jnp.exp(dt_1xD * at_NxD) * states[-1]
                          + b_NxG[:, i:i + 1] * (dt_1xD * x_GxD[i:i + 1]))
        dx_rows, ddt_rows = [None] * chunk, [None] * chunk
        for i in reversed(range(chunk)):
            x_1xD, dt_1xD, dy_1xD = x_GxD[i:i + 1], dt_GxD[i:i + 1], dy_GxD[i:i + 1]
            g_NxD = c_NxG[:, i:i + 1] * dy_1xD + g_next_NxD
            decay_NxD = jnp.exp(dt_1xD * at_NxD)
            gb_1xD = jnp.sum(g_NxD * b_NxG[:, i:i + 1], axis=0, keepdims=True)
            dlog_NxD = g_NxD * decay_NxD * states[i]
            dx_rows[i] = gb_1xD * dt_1xD
            ddt_rows[i] = jnp.sum(dlog_NxD * at_NxD, axis=0, keepdims=True) + gb_1xD * x_1xD
            is_t = lane == t0 + i
            db_Nx1 = jnp.sum(g_NxD * (dt_1xD * x_1xD), axis=1, keepdims=True)
            dc_Nx1 = jnp.sum(states[i + 1] * dy_1xD, axis=1, keepdims=True)
            db_NxT = jnp.where(is_t, db_Nx1, db_NxT)
            dc_NxT = jnp.where(is_t, dc_Nx1, dc_NxT)
            dat_NxD = dat_NxD + dlog_NxD * dt_1xD
            g_next_NxD = g_NxD * decay_NxD
        dx_ref[pl.ds(t0, chunk), :] = jnp.concatenate(dx_rows, axis=0).astype(dx_ref.dtype)
        ddt_ref[pl.ds(t0, chunk), :] = jnp.concatenate(ddt_rows, axis=0).astype(ddt_ref.dtype)
        return g_next_NxD, dat_NxD, db_NxT, dc_NxT

    zeros = jnp.zeros((at_NxD.shape[0], block_t), f32)
    g_next, dat, db, dc = lax.fori_loop(0, n_groups, group,
                                        (g_scr[...], dat_ref[...], zeros, zeros))
    g_scr[...] = g_next
    dat_ref[...] = dat
    dbt_ref[...] = db
    dct_ref[...] = dc


def backward_tpu(x, dt, at, bt, ct, dy, states, *, block_d, block_t, chunk, interpret):
    """Returns dx, ddt [B, Lp, Dp]; dat [B, Np, Dp] float32 (per batch row); dbt, dct
    [B, Dp/block_d, Np, Lp] float32 (per channel block, transposed like bt, ct)."""
    batch, seq_len, dim = x.shape
    n_state = at.shape[0]
    n_t = seq_len // block_t
    n_blocks = dim // block_d
    seq_spec = pl.BlockSpec((None, block_t, block_d), lambda b, j, c: (b, n_t - 1 - c, j))
    col_spec = pl.BlockSpec((None, n_state, block_t), lambda b, j, c: (b, 0, n_t - 1 - c))
    partial_spec = pl.BlockSpec((None, None, n_state, block_t),
                                lambda b, j, c: (b, j, 0, n_t - 1 - c))
    kernel = functools.partial(_backward_kernel, block_t=block_t, chunk=chunk)
    return pl.pallas_call(
        kernel,
        out_shape=[
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            jax.ShapeDtypeStruct(dt.shape, dt.dtype),
            jax.ShapeDtypeStruct((batch, n_state, dim), f32),
            jax.ShapeDtypeStruct((batch, n_blocks, n_state, seq_len), f32),
            jax.ShapeDtypeStruct((batch, n_blocks, n_state, seq_len), f32),
        ],
        grid=(batch, n_blocks, n_t),
        in_specs=[seq_spec, seq_spec, pl.BlockSpec((n_state, block_d), lambda b, j, c: (0, j)),
                  col_spec, col_spec, seq_spec,
                  pl.BlockSpec((None, block_t // chunk, n_state, block_d),
                               lambda b, j, c: (b, n_t - 1 - c, 0, j))],
        out_specs=[seq_spec, seq_spec,
                   pl.BlockSpec((None, n_state, block_d), lambda b, j, c: (b, 0, j)),
                   partial_spec, partial_spec],
        scratch_shapes=[pltpu.VMEM((n_state, block_d), f32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="selective_scan_bwd",
    )(x, dt, at, bt, ct, dy, states)

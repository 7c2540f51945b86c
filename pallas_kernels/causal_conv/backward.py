"""Backward kernels of the causal convolution: GPU (Triton) and TPU (Mosaic) variants.

Input gradient: the forward Toeplitz kernel run anti-causally on dY (see forward.py).
Filter gradient dh[k T + r] = sum_{b, j} sum_p dy[b, (j + k) T + p] x[b, j T + p - r]: a program
owns K consecutive lag blocks k0..k0+K-1 of one channel and loops over (x block j, batch b), adding
    DH[k0:k0+K] += DY_stack[K, T] @ X_toeplitz[T, T],
    DY_stack[kk, p] = dy[b, (j + k0 + kk) T + p],   X_toeplitz[p, r] = x[b, j T + p - r],
both gathered from the rows layout (dY rows past the end are clamped onto zero padding rows).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.causal_conv.forward import toeplitz_tile_tpu

f32 = jnp.float32


def _filter_grad_kernel(dy_ref, x_ref, dh_ref, *, block_t, block_lags, batch, batch_p, n_blocks,
                        pad, precision, compute_dtype):
    t, lags = block_t, block_lags
    k0 = pl.program_id(1) * lags
    n_iter = jnp.maximum(n_blocks - k0, 0) * batch
    p = lax.broadcasted_iota(jnp.int32, (t, t), 0)
    r = lax.broadcasted_iota(jnp.int32, (t, t), 1)
    rel = p - r                                     # x time relative to block j start, in (-T, T)
    block_off = jnp.where(rel < 0, -1, 0)
    col = rel - block_off * t
    kk = lax.broadcasted_iota(jnp.int32, (lags,), 0)

    def step(it, acc):
        j = lax.div(it, batch)
        b = lax.rem(it, batch)
        dy_blocks = jnp.minimum(j + k0 + kk, n_blocks)
        dy_KxT = dy_ref[pad + dy_blocks * batch_p + b, :].astype(compute_dtype)
        x_TxT = x_ref[pad + (j + block_off) * batch_p + b, col].astype(compute_dtype)
        return acc + jnp.dot(dy_KxT, x_TxT, precision=precision, preferred_element_type=f32)

    acc = lax.fori_loop(0, n_iter, step, jnp.zeros((lags, t), f32))
    dh_ref[...] = acc.astype(dh_ref.dtype)


def filter_grad_gpu(dy_rows, x_rows, *, block_t, block_lags, batch, batch_p, n_blocks, pad,
                    precision, num_warps, num_stages, interpret):
    """dy_rows, x_rows [D, P + nB*Bp + P', T] -> dh [D, ceil(nB/K)*K, T] float32 (lag, tap)."""
    dim, total_rows, t = x_rows.shape
    n_tiles = -(-n_blocks // block_lags)
    compute_dtype = jnp.promote_types(dy_rows.dtype, x_rows.dtype)
    kernel = functools.partial(
        _filter_grad_kernel, block_t=block_t, block_lags=block_lags, batch=batch, batch_p=batch_p,
        n_blocks=n_blocks, pad=pad, precision=precision, compute_dtype=compute_dtype)
    row_spec = pl.BlockSpec((None, total_rows, t), lambda d, k: (d, 0, 0))
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((dim, n_tiles * block_lags, t), f32),
        grid=(dim, n_tiles),
        in_specs=[row_spec, row_spec],
        out_specs=pl.BlockSpec((None, block_lags, t), lambda d, k: (d, k, 0)),
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="causal_conv_dh",
    )(dy_rows, x_rows)


def _filter_grad_kernel_tpu(dy_ref, x_ref, dh_ref, *, block_t, block_lags, batch, batch_p,
                            n_blocks, pad, precision, compute_dtype):
    # TPU variant: DY_stack is one strided load (stride Bp rows; the rows layout has >= K*Bp zero
    # rows at the end), and the x tile Z[r, p] = x[b, j T + p - r] is a rolled Toeplitz tile used
    # transposed (DY_stack @ Z^T), built from x rows (j-1, b) and (j, b).
    t, lags = block_t, block_lags
    k0 = pl.program_id(1) * lags
    n_iter = jnp.maximum(n_blocks - k0, 0) * batch
    kk = lax.broadcasted_iota(jnp.int32, (lags, 1), 0)

    def step(it, acc):
        j = lax.div(it, batch)
        b = lax.rem(it, batch)
        dy_KxT = dy_ref[pl.ds(pad + (j + k0) * batch_p + b, lags, stride=batch_p), :]
        dy_KxT = jnp.where(j + k0 + kk < n_blocks, dy_KxT.astype(f32), 0.0).astype(compute_dtype)
        prev = x_ref[pl.ds(pad + (j - 1) * batch_p + b, 1), :]
        cur = x_ref[pl.ds(pad + j * batch_p + b, 1), :]
        z_TxT = toeplitz_tile_tpu(jnp.concatenate([prev, cur], axis=1), t).astype(compute_dtype)
        return acc + lax.dot_general(dy_KxT, z_TxT, (((1,), (1,)), ((), ())), precision=precision,
                                     preferred_element_type=f32)

    acc = lax.fori_loop(0, n_iter, step, jnp.zeros((lags, t), f32))
    dh_ref[...] = acc.astype(dh_ref.dtype)


def filter_grad_tpu(dy_rows, x_rows, *, block_t, block_lags, batch, batch_p, n_blocks, pad,
                    precision, interpret):
    """As `filter_grad_gpu`, for the TPU (Mosaic) lowering."""
    dim, total_rows, t = x_rows.shape
    n_tiles = -(-n_blocks // block_lags)
    compute_dtype = jnp.promote_types(dy_rows.dtype, x_rows.dtype)
    kernel = functools.partial(
        _filter_grad_kernel_tpu, block_t=block_t, block_lags=block_lags, batch=batch,
        batch_p=batch_p, n_blocks=n_blocks, pad=pad, precision=precision,
        compute_dtype=compute_dtype)
    row_spec = pl.BlockSpec((None, total_rows, t), lambda d, k: (d, 0, 0))
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((dim, n_tiles * block_lags, t), f32),
        grid=(dim, n_tiles),
        in_specs=[row_spec, row_spec],
        out_specs=pl.BlockSpec((None, block_lags, t), lambda d, k: (d, k, 0)),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
        name="causal_conv_dh",
    )(dy_rows, x_rows)

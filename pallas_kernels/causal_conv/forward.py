"""Blocked-Toeplitz causal convolution kernels: GPU (Triton lowering) and TPU (Mosaic lowering).

Per channel, time is cut into blocks of T steps and the filter into lag blocks of T taps. With
rows = (time block i, batch b) pairs of one channel (flat row i * Bp + b), output block i gets
    Y[i] = sum_k X[i - k] @ W_k,    W_k[q, p] = h[k T + p - q]      (zero for negative lags)
so every step of the loop over lag blocks is one [R, T] x [T, T] matmul on the matrix units, where
the R rows of a tile read one contiguous slab of X shifted by k * Bp rows. The same kernel with
`anti_causal=True` computes the input gradient dX[i] = sum_k dY[i + k] @ W_k^T.

Operands use the "rows" layout [D, P + nB * Bp + P', T] (zero rows before and after), and the
filter has T leading zero taps, so no load needs a mask. The GPU kernel gathers the [T, T] tile from
the taps; the TPU kernel builds it from two rows of taps with a strided lane roll.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

f32 = jnp.float32


def _toeplitz_kernel(x_ref, h_ref, o_ref, *, anti_causal, block_t, block_rows, batch_p, n_blocks,
                     pad, precision):
    t, rows = block_t, block_rows
    row0 = pl.program_id(1) * rows
    if anti_causal:
        n_lags = n_blocks - lax.div(row0, batch_p)
    else:
        n_lags = lax.div(row0 + rows - 1, batch_p) + 1
    a = lax.broadcasted_iota(jnp.int32, (t, t), 0)  # contraction index
    b = lax.broadcasted_iota(jnp.int32, (t, t), 1)  # output index
    tap_offset = (a - b) if anti_causal else (b - a)

    def lag_block(k, acc):
        shift = k * batch_p
        start = pad + row0 + (shift if anti_causal else -shift)
        x_RxT = x_ref[pl.ds(start, rows), :]
        w_TxT = h_ref[t + k * t + tap_offset].astype(x_RxT.dtype)
        return acc + jnp.dot(x_RxT, w_TxT, precision=precision, preferred_element_type=f32)

    acc = lax.fori_loop(0, n_lags, lag_block, jnp.zeros((rows, t), f32))
    o_ref[...] = acc.astype(o_ref.dtype)


def toeplitz_conv_gpu(x_rows, h_taps, *, anti_causal, block_t, block_rows, batch_p, n_blocks, pad,
                      precision, num_warps, num_stages, interpret, out_dtype):
    """x_rows [D, P + nB*Bp + P', T]; h_taps [D, T + nB*T] -> [D, nB*Bp, T] in out_dtype."""
    dim, total_rows, t = x_rows.shape
    n_rows = n_blocks * batch_p
    kernel = functools.partial(
        _toeplitz_kernel, anti_causal=anti_causal, block_t=block_t, block_rows=block_rows,
        batch_p=batch_p, n_blocks=n_blocks, pad=pad, precision=precision)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((dim, n_rows, t), out_dtype),
        grid=(dim, n_rows // block_rows),
        in_specs=[pl.BlockSpec((None, total_rows, t), lambda d, r: (d, 0, 0)),
                  pl.BlockSpec((None, h_taps.shape[1]), lambda d, r: (d, 0))],
        out_specs=pl.BlockSpec((None, block_rows, t), lambda d, r: (d, r, 0)),
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="causal_conv_dx" if anti_causal else "causal_conv_fwd",
    )(x_rows, h_taps)


def toeplitz_tile_tpu(u_1x2T, block_t):
    """[1, 2T] window u -> [T, T] tile W[q, p] = u[T + p - q], built with a strided lane roll."""
    u_TxT2 = jnp.broadcast_to(u_1x2T.astype(f32), (block_t, 2 * block_t))
    return pltpu.roll(u_TxT2, block_t, 1, stride=1, stride_axis=0)[:, :block_t]


def _toeplitz_kernel_tpu(x_ref, h_ref, o_ref, *, anti_causal, block_t, block_rows, batch_p,
                         n_blocks, pad, precision):
    # TPU variant: the [T, T] tile comes from two rows of taps by a strided roll (no gathers), and
    # the anti-causal product contracts the tile's second axis (x @ W^T).
    t, rows = block_t, block_rows
    row0 = pl.program_id(1) * rows
    if anti_causal:
        n_lags = n_blocks - lax.div(row0, batch_p)
    else:
        n_lags = lax.div(row0 + rows - 1, batch_p) + 1

    def lag_block(k, acc):
        shift = k * batch_p
        start = pl.multiple_of(pad + row0 + (shift if anti_causal else -shift), 8)
        x_RxT = x_ref[pl.ds(start, rows), :]
        w_TxT = toeplitz_tile_tpu(jnp.concatenate([h_ref[k], h_ref[k + 1]], axis=1), t)
        w_TxT = w_TxT.astype(x_RxT.dtype)
        dims = (((1,), (1,)), ((), ())) if anti_causal else (((1,), (0,)), ((), ()))
        return acc + lax.dot_general(x_RxT, w_TxT, dims, precision=precision,
                                     preferred_element_type=f32)

    acc = lax.fori_loop(0, n_lags, lag_block, jnp.zeros((rows, t), f32))
    o_ref[...] = acc.astype(o_ref.dtype)


def toeplitz_conv_tpu(x_rows, h_taps, *, anti_causal, block_t, block_rows, batch_p, n_blocks, pad,
                      precision, interpret, out_dtype):
    """x_rows [D, P + nB*Bp + P', T]; h_taps [D, nB + 1, 1, T] (row m = taps (m-1)T .. mT-1)."""
    dim, total_rows, t = x_rows.shape
    n_rows = n_blocks * batch_p
    kernel = functools.partial(
        _toeplitz_kernel_tpu, anti_causal=anti_causal, block_t=block_t, block_rows=block_rows,
        batch_p=batch_p, n_blocks=n_blocks, pad=pad, precision=precision)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((dim, n_rows, t), out_dtype),
        grid=(dim, n_rows // block_rows),
        in_specs=[pl.BlockSpec((None, total_rows, t), lambda d, r: (d, 0, 0)),
                  pl.BlockSpec((None,) + h_taps.shape[1:], lambda d, r: (d, 0, 0, 0))],
        out_specs=pl.BlockSpec((None, block_rows, t), lambda d, r: (d, r, 0)),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
        name="causal_conv_dx" if anti_causal else "causal_conv_fwd",
    )(x_rows, h_taps)

"""Public entry point of the causal-convolution kernel, with its custom VJP."""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels import _common
from pallas_kernels.causal_conv import backward, forward
from pallas_kernels.causal_conv.config import CausalConvConfig


def causal_conv(x, h, *, interpret=False, config: CausalConvConfig | None = None):
    """Long causal depthwise convolution y[b,t,d] = sum_{s<=t} h[t-s,d] x[b,s,d].

    x: [B, L, D]; h: [L, D] -> y [B, L, D] in x.dtype (float32 accumulation). Any B, L, D (padded
    inside); float32 / bfloat16. Differentiable through backward kernels (input and filter
    gradients). `interpret` overrides `config.interpret` (True, or `pltpu.InterpretParams()`).
    Raises UnsupportedShapeError where no kernel applies (e.g. on CPU without interpret).
    """
    config = config or CausalConvConfig()
    if interpret is not False:
        config = dataclasses.replace(config, interpret=interpret)
    if x.ndim != 3 or h.ndim != 2 or h.shape != x.shape[1:]:
        raise ValueError(
            f"causal_conv expects x [B, L, D] and h [L, D], got {x.shape} and {h.shape}")
    _common.check_float("x", x)
    _common.check_float("h", h)
    target = _common.resolve_target(config.target, config.interpret)
    config = config.for_target(target)
    if target == "tpu" and not config.interpret and config.block_t % 128:
        raise _common.UnsupportedShapeError(
            f"TPU kernel needs block_t % 128 == 0, got {config.block_t}")
    return _causal_conv(config, target, x, h)


class _Geometry(NamedTuple):
    batch: int
    seq_len: int
    batch_p: int      # batch padded to a power of two (>= 8 on TPU: sublane-aligned row slabs)
    n_blocks: int     # time blocks of T
    pad: int          # zero rows before the data in the rows layout
    pad_back: int     # zero rows after it


def _geometry(config, target, x) -> _Geometry:
    batch, seq_len, _ = x.shape
    t, rows = config.block_t, config.block_rows
    batch_p = _common.next_power_of_2(batch)
    if target == "tpu":
        batch_p = max(batch_p, 8)
    n_blocks = -(-seq_len // t)
    if batch_p < rows:  # a row tile holds rows / batch_p whole time blocks
        n_blocks = _common.round_up(n_blocks, rows // batch_p)
    pad = max(rows, batch_p)
    pad_back = max(pad, config.block_lags * batch_p) if target == "tpu" else pad
    return _Geometry(batch, seq_len, batch_p, n_blocks, pad, pad_back)


def _to_rows(a, geo: _Geometry, t):
    """[B, L, D] -> [D, P + nB*Bp + P', T]: row P + i*Bp + b holds a[b, i*T:(i+1)*T, d]."""
    dim = a.shape[2]
    a = _common.pad_axis(a, 0, 0, geo.batch_p - geo.batch)
    a = _common.pad_axis(a, 1, 0, geo.n_blocks * t - geo.seq_len)
    a = a.reshape(geo.batch_p, geo.n_blocks, t, dim).transpose(3, 1, 0, 2)
    a = a.reshape(dim, geo.n_blocks * geo.batch_p, t)
    return _common.pad_axis(a, 1, geo.pad, geo.pad_back)


def _from_rows(a, geo: _Geometry, t):
    """[D, nB*Bp, T] -> [B, L, D]."""
    dim = a.shape[0]
    a = a.reshape(dim, geo.n_blocks, geo.batch_p, t).transpose(2, 1, 3, 0)
    return a.reshape(geo.batch_p, geo.n_blocks * t, dim)[:geo.batch, :geo.seq_len]


def _filter_taps(h, geo: _Geometry, t, target):
    """[L, D] -> taps with T leading zeros (tap index T + lag): [D, T + nB*T] (GPU, gathered) or
    [D, nB + 1, 1, T] (TPU: row m holds lags (m-1)T .. mT-1, read two rows at a time)."""
    h = _common.pad_axis(h, 0, t, geo.n_blocks * t - geo.seq_len).T
    if target == "tpu":
        return h.reshape(h.shape[0], geo.n_blocks + 1, 1, t)
    return h


def _conv(config, target, geo, rows, taps, *, anti_causal, out_dtype):
    kwargs = dict(anti_causal=anti_causal, block_t=config.block_t, block_rows=config.block_rows,
                  batch_p=geo.batch_p, n_blocks=geo.n_blocks, pad=geo.pad,
                  precision=_common.dot_precision(config.precision, config.interpret),
                  interpret=config.interpret, out_dtype=out_dtype)
    if target == "tpu":
        return forward.toeplitz_conv_tpu(rows, taps, **kwargs)
    return forward.toeplitz_conv_gpu(rows, taps, num_warps=config.num_warps,
                                     num_stages=config.num_stages, **kwargs)


def _filter_grad(config, target, geo, dy_rows, x_rows):
    kwargs = dict(block_t=config.block_t, block_lags=config.block_lags, batch=geo.batch,
                  batch_p=geo.batch_p, n_blocks=geo.n_blocks, pad=geo.pad,
                  precision=_common.dot_precision(config.precision, config.interpret),
                  interpret=config.interpret)
    if target == "tpu":
        return backward.filter_grad_tpu(dy_rows, x_rows, **kwargs)
    return backward.filter_grad_gpu(dy_rows, x_rows, num_warps=config.num_warps,
                                    num_stages=config.num_stages, **kwargs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _causal_conv(config, target, x, h):
    return _causal_conv_fwd(config, target, x, h)[0]


def _causal_conv_fwd(config, target, x, h):
    geo = _geometry(config, target, x)
    x_rows = _to_rows(x, geo, config.block_t)
    taps = _filter_taps(h, geo, config.block_t, target)
    y_rows = _conv(config, target, geo, x_rows, taps, anti_causal=False, out_dtype=x.dtype)
    # The empty array only carries h's dtype for the filter gradient.
    return _from_rows(y_rows, geo, config.block_t), (x_rows, taps, jnp.zeros((0,), h.dtype))


def _causal_conv_bwd(config, target, residuals, dy):
    x_rows, taps, h_marker = residuals
    t = config.block_t
    _, seq_len, dim = dy.shape
    geo = _geometry(config, target, dy)
    dy_rows = _to_rows(dy.astype(x_rows.dtype), geo, t)
    dx_rows = _conv(config, target, geo, dy_rows, taps, anti_causal=True, out_dtype=x_rows.dtype)
    dh = _filter_grad(config, target, geo, dy_rows, x_rows)
    dh = dh.reshape(dim, -1)[:, :seq_len].T.astype(h_marker.dtype)
    return _from_rows(dx_rows, geo, t), dh


_causal_conv.defvjp(_causal_conv_fwd, _causal_conv_bwd)

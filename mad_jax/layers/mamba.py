"""Mamba's selective SSM block (Gu & Dao 2023), after athms/mad-lab `mamba.py` (itself
mamba_ssm's `mamba_simple.Mamba`).

On u [B, L, D], with inner width I = expand * D, state size N and dt rank R = ceil(D / 16):
  x, z   = split(u W_in)                          (W_in: D -> 2I, no bias)
  x      = silu(short causal depthwise conv_{d_conv}(x))   (with bias)
  dt_r, B, C = split(x W_x)                        (W_x: I -> R + 2N, no bias)
  dt     = softplus(dt_r W_dt + b_dt)              (W_dt: R -> I)
  h_t    = exp(dt_t A) h_{t-1} + (dt_t x_t) B_t,   y_t = h_t C_t      (`mad_jax.ops.selective_scan`)
  y      = (y + D_skip x) * silu(z);  out = y W_out  (W_out: I -> D, no bias)
with A = -exp(A_log) [I, N].

Initialisation as the reference: Linear weights U(+-1/sqrt(fan_in)); W_dt U(+-dt_scale/sqrt(R));
b_dt = softplus^{-1}(dt0) with dt0 log-uniform in [dt_min, dt_max] (floored at dt_init_floor), so
that dt = softplus(b_dt) starts in [dt_min, dt_max]; A_log = log(1..N) per channel (S4D-real:
A = -(1..N)); D_skip = 1; the short conv like PyTorch's Conv1d.
The dt softplus, the scan, the skip and the gate are computed in float32.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mad_jax import ops
from mad_jax.layers.accounting import dense_flops
from mad_jax.layers.initializers import linear_bias, linear_weight, torch_linear_init
from mad_jax.layers.registry import register_layer
from mad_jax.layers.short_conv import ShortConv, short_conv_flops, short_conv_state


def dt_bias_init(dt_min: float, dt_max: float, dt_init_floor: float) -> nn.initializers.Initializer:
    """Inverse-softplus of dt ~ logUniform[dt_min, dt_max] (floored), per channel."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        log_dt = jax.random.uniform(key, shape, jnp.float32, math.log(dt_min), math.log(dt_max))
        dt = jnp.maximum(jnp.exp(log_dt), dt_init_floor)
        # softplus^{-1}(dt) = dt + log(1 - exp(-dt)), written with expm1 for small dt.
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    return init


def _symmetric_uniform(bound: float) -> nn.initializers.Initializer:
    """U(-bound, bound)."""
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def s4d_real_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """A_log [I, N] = log(1..N) in every channel, so that A = -exp(A_log) = -(1..N)."""
    del key
    n_state = shape[-1]
    return jnp.broadcast_to(jnp.log(jnp.arange(1, n_state + 1, dtype=jnp.float32)),
                            shape).astype(dtype)


class Mamba(nn.Module):
    """Mamba block (see the module docstring).

    Fields (defaults are the MAD `mamba` config, configs/layers/mamba.yml): d_state N (4),
    d_conv (4), expand (2), dt_rank (None: ceil(D / 16)), dt_min / dt_max (1e-3 / 1e-1),
    dt_init_floor (1e-4), dt_scale (1), conv_bias (True), use_bias on the in/out projections
    (False), kernel_impl: passed to `mad_jax.ops.selective_scan`.
    """

    d_state: int = 4
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    conv_bias: bool = True
    use_bias: bool = False
    kernel_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def sizes(self, dim: int) -> tuple[int, int]:
        """(inner width I = expand * D, dt rank R)."""
        rank = math.ceil(dim / 16) if self.dt_rank is None else self.dt_rank
        return int(self.expand * dim), rank

    def _dense(self, features: int, axes: tuple[Any, Any], name: str, use_bias: bool,
               kernel_init: nn.initializers.Initializer | None = None,
               bias_init: nn.initializers.Initializer = nn.initializers.zeros,
               dtype: Any = None) -> nn.Dense:
        return nn.Dense(features, use_bias=use_bias, dtype=dtype or self.dtype,
                        param_dtype=self.param_dtype,
                        kernel_init=nn.with_logical_partitioning(kernel_init or torch_linear_init(),
                                                                 axes),
                        bias_init=nn.with_logical_partitioning(bias_init, axes[-1:]), name=name)

    @nn.compact
    def __call__(self, u_BxLxD: jnp.ndarray) -> jnp.ndarray:
        dim = u_BxLxD.shape[-1]
        inner, rank = self.sizes(dim)
        f32 = jnp.float32

        xz_BxLx2I = self._dense(2 * inner, ("embed", "mlp"), "in_proj",
                                self.use_bias)(u_BxLxD.astype(self.dtype))
        x_BxLxI, z_BxLxI = jnp.split(xz_BxLx2I, 2, axis=-1)
        x_BxLxI = ShortConv(self.d_conv, use_bias=self.conv_bias, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="conv1d")(x_BxLxI)
        x_BxLxI = jax.nn.silu(x_BxLxI)

        dbc_BxLxP = self._dense(rank + 2 * self.d_state, ("mlp", None), "x_proj", False)(x_BxLxI)
        dt_BxLxR, b_BxLxN, c_BxLxN = jnp.split(dbc_BxLxP, [rank, rank + self.d_state], axis=-1)
        dt_std = self.dt_scale * rank ** -0.5
        dt_proj = self._dense(inner, (None, "mlp"), "dt_proj", True,
                              # Linear inits: the autoencoder re-draws them, as the reference's
                              kernel_init=linear_weight(_symmetric_uniform(dt_std)),
                              bias_init=linear_bias(dt_bias_init(self.dt_min, self.dt_max,
                                                                 self.dt_init_floor)),
                              dtype=f32)
        dt_BxLxI = jax.nn.softplus(dt_proj(dt_BxLxR.astype(f32)))

        a_log_IxN = self.param("A_log", nn.with_logical_partitioning(s4d_real_init, ("mlp", None)),
                               (inner, self.d_state), self.param_dtype)
        a_IxN = -jnp.exp(a_log_IxN.astype(f32))
        d_skip_I = self.param("D", nn.with_logical_partitioning(nn.initializers.ones, ("mlp",)),
                              (inner,), self.param_dtype).astype(f32)

        x_f32 = x_BxLxI.astype(f32)
        y_BxLxI = ops.selective_scan(x_f32, dt_BxLxI, a_IxN, b_BxLxN.astype(f32),
                                     c_BxLxN.astype(f32), impl=self.kernel_impl)
        y_BxLxI = (y_BxLxI + d_skip_I * x_f32) * jax.nn.silu(z_BxLxI.astype(f32))
        return self._dense(dim, ("mlp", "embed"), "out_proj",
                           self.use_bias)(y_BxLxI.astype(self.dtype))

    def flops(self, dim: int, seq_len: int) -> int:
        """Forward FLOPs per sequence (I = expand D, N = d_state, R = dt rank, K = d_conv):
        in-projection 2 L D 2I, short conv 2 K L I, SiLU L I, x-projection 2 L I (R + 2N),
        dt-projection 2 L R I + bias and softplus 2 L I, the scan 7 L I N + L I (per state element:
        dt A and its exp 2, the input (dt x) B 1, h update 2, the C contraction 2; dt x once per
        channel), the skip 2 L I, the gate SiLU(z) and product 2 L I, out-projection 2 L I D."""
        inner, rank = self.sizes(dim)
        n = self.d_state
        return int(dense_flops(seq_len, dim, 2 * inner)
                   + short_conv_flops(self.d_conv, seq_len, inner) + seq_len * inner
                   + dense_flops(seq_len, inner, rank + 2 * n)
                   + dense_flops(seq_len, rank, inner) + 2 * seq_len * inner
                   + 7 * seq_len * inner * n + seq_len * inner
                   + 2 * seq_len * inner + 2 * seq_len * inner
                   + dense_flops(seq_len, inner, dim))

    def state_size(self, dim: int, seq_len: int) -> int:
        """Numbers kept per sequence to generate the next token, independent of L: the SSM state
        I * N plus the short conv's tail (d_conv - 1) * I.
        Default at D=128: 256 * 4 + 3 * 256 = 1792."""
        inner, _ = self.sizes(dim)
        return int(inner * self.d_state + short_conv_state(self.d_conv, inner))


register_layer("mamba", Mamba, {"d_state": 4, "d_conv": 4, "expand": 2, "dt_min": 1e-3,
                                "dt_max": 1e-1})

"""Mamba-2: the state space dual (SSD) layer (Dao & Gu 2024, "Transformers are SSMs", arXiv
2405.21060), after state-spaces/mamba `Mamba2Simple`.

On u [B, L, D], with inner width I = expand * D, H = I / P heads of width P (`headdim`), G groups of
B / C (`n_groups`, each shared by H / G heads) and state size N (`d_state`):
  z, xBC, dt_raw = split(u W_in)              (W_in: D -> 2I + 2GN + H, no bias)
  x, B, C = split(silu(short causal depthwise conv_{d_conv}(xBC)))  (over I + 2GN channels, bias)
  dt     = softplus(dt_raw + b_dt)            [B, L, H], one step size per head
  A      = -exp(A_log)                        [H], one scalar decay rate per head
  per head h (x_t [P], B_t, C_t [N] of its group; state S [N, P]):
    S_t = exp(dt_t A) S_{t-1} + (dt_t B_t)^T x_t,     y_t = C_t S_t + D_skip x_t
  y   = RMSNorm_groups(y * silu(z)) * w_norm   (gate first, then the norm: `norm_before_gate=False`)
  out = y W_out                               (W_out: I -> D, no bias)

The recurrence is decayed linear attention with a scalar decay per head, so it runs through the
shared chunked op `mad_jax.ops.linear_attention` with q = C, k = dt B, v = x and log decay dt A
broadcast over the N key channels (its chunked path is the SSD's chunked parallel form;
`ops.linear_attention_recurrent` is the step-by-step form).

Initialisation as in Mamba2Simple: in/out projections PyTorch's Linear default; the conv PyTorch's
Conv1d default; b_dt = softplus^{-1}(dt0) with dt0 log-uniform in [dt_min, dt_max] (floored at
dt_init_floor), one per head; A ~ U[1, 16] per head (`A_init_range`), stored as A_log = log A;
D_skip = 1 per head; the norm weight 1. b_dt, A_log and D_skip are not Linear parameters, so the
autoencoder backbone keeps their init. The dt softplus, the recurrence, the skip, the gate and the
norm run in float32.

Defaults at D = 128 (expand 2, headdim 16, d_state 4, n_groups 1, d_conv 4): iso-state with the
MAD `mamba` layer. Both carry I * N = 256 * 4 = 1,024 numbers of SSM state (Mamba: I channels x N
states; Mamba-2: H heads x P x N) plus the conv tail; Mamba-2's tail also covers the 2N channels
of B and C, so its state at D = 128 is 1,024 + 3 * (256 + 8) = 1,816 against Mamba's 1,792.
headdim 16 gives 16 heads, i.e. 16 distinct decay rates (the paper's headdim 64-128 at I >= 1536
gives 24+ heads; 64 here would leave 4). Parameters at D = 128: 103,000 (Mamba: 107,264).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mad_jax import ops
from mad_jax.layers.accounting import dense_flops
from mad_jax.layers.heads import from_heads_first, heads_first
from mad_jax.layers.initializers import torch_dense
from mad_jax.layers.mamba import dt_bias_init
from mad_jax.layers.registry import register_layer
from mad_jax.layers.short_conv import ShortConv, short_conv_flops, short_conv_state


def a_log_uniform_init(low: float, high: float) -> nn.initializers.Initializer:
    """A_log = log(A) with A ~ U[low, high] per head, so that A = -exp(A_log) in [-high, -low]."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jnp.log(jax.random.uniform(key, shape, jnp.float32, low, high)).astype(dtype)

    return init


class Mamba2(nn.Module):
    """Mamba-2 (SSD) layer (see the module docstring).

    Fields: d_state N (4), d_conv (4), expand (2), headdim P (16), n_groups G (1), dt_min / dt_max
    (1e-3 / 1e-1), dt_init_floor (1e-4), a_init_range ((1, 16)), conv_bias (True), use_bias on the
    in/out projections (False), norm_eps (1e-5), chunk_size and kernel_impl: passed to
    `mad_jax.ops.linear_attention`.
    """

    d_state: int = 4
    d_conv: int = 4
    expand: int = 2
    headdim: int = 16
    n_groups: int = 1
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    a_init_range: tuple[float, float] = (1.0, 16.0)
    conv_bias: bool = True
    use_bias: bool = False
    norm_eps: float = 1e-5
    chunk_size: int = 64
    kernel_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def sizes(self, dim: int) -> tuple[int, int]:
        """(inner width I = expand * D, heads H = I / headdim); raises if they do not divide."""
        inner = int(self.expand * dim)
        if inner % self.headdim:
            raise ValueError(f"inner width expand*dim = {inner} is not a multiple of "
                             f"headdim={self.headdim}; pick a headdim that divides it")
        heads = inner // self.headdim
        if heads % self.n_groups:
            raise ValueError(f"{heads} heads do not split into n_groups={self.n_groups}; pick "
                             "n_groups dividing expand*dim/headdim")
        return inner, heads

    def _param(self, name: str, init: nn.initializers.Initializer, shape: tuple[int, ...],
               axes: tuple[Any, ...]) -> jnp.ndarray:
        return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)

    @nn.compact
    def __call__(self, u_BxLxD: jnp.ndarray) -> jnp.ndarray:
        batch, seq_len, dim = u_BxLxD.shape
        inner, heads = self.sizes(dim)
        groups, n_state, head_dim = self.n_groups, self.d_state, self.headdim
        f32 = jnp.float32

        proj_BxLxE = torch_dense(self, 2 * inner + 2 * groups * n_state + heads, ("embed", "mlp"),
                                 "in_proj", self.use_bias)(u_BxLxD.astype(self.dtype))
        z_BxLxI, xbc_BxLxC, dt_BxLxH = jnp.split(
            proj_BxLxE, [inner, 2 * inner + 2 * groups * n_state], axis=-1)
        xbc_BxLxC = jax.nn.silu(ShortConv(self.d_conv, use_bias=self.conv_bias, dtype=self.dtype,
                                          param_dtype=self.param_dtype, name="conv1d")(xbc_BxLxC))
        x_BxLxI, b_BxLxGN, c_BxLxGN = jnp.split(
            xbc_BxLxC, [inner, inner + groups * n_state], axis=-1)

        dt_bias_H = self._param("dt_bias", dt_bias_init(self.dt_min, self.dt_max,
                                                        self.dt_init_floor), (heads,), ("heads",))
        a_log_H = self._param("A_log", a_log_uniform_init(*self.a_init_range), (heads,),
                              ("heads",))
        d_skip_H = self._param("D", nn.initializers.ones, (heads,), ("heads",)).astype(f32)
        dt_BxLxH = jax.nn.softplus(dt_BxLxH.astype(f32) + dt_bias_H.astype(f32))
        a_H = -jnp.exp(a_log_H.astype(f32))

        # Heads first for the op; head h reads group h // (H / G) of B and C.
        x_BxHxLxP = heads_first(x_BxLxI.reshape(batch, seq_len, heads, head_dim), f32)
        dt_BxHxL = heads_first(dt_BxLxH)

        def per_head(a_BxLxGN):  # [B, L, G*N] -> [B, H, L, N]
            a_BxGxLxN = heads_first(a_BxLxGN.reshape(batch, seq_len, groups, n_state), f32)
            return jnp.repeat(a_BxGxLxN, heads // groups, axis=1)

        c_BxHxLxN, b_BxHxLxN = per_head(c_BxLxGN), per_head(b_BxLxGN)
        log_decay_BxHxLxN = jnp.broadcast_to((dt_BxHxL * a_H[None, :, None])[..., None],
                                             b_BxHxLxN.shape)
        y_BxHxLxP = ops.linear_attention(c_BxHxLxN, b_BxHxLxN * dt_BxHxL[..., None], x_BxHxLxP,
                                         log_decay_BxHxLxK=log_decay_BxHxLxN,
                                         chunk_size=self.chunk_size, impl=self.kernel_impl)
        y_BxHxLxP = y_BxHxLxP + d_skip_H[None, :, None, None] * x_BxHxLxP
        y_BxLxI = from_heads_first(y_BxHxLxP).reshape(batch, seq_len, inner)

        # Gated RMSNorm: gate first, then normalise each group of I / G channels (float32).
        y_BxLxI = y_BxLxI * jax.nn.silu(z_BxLxI.astype(f32))
        y_BxLxGxW = y_BxLxI.reshape(batch, seq_len, groups, inner // groups)
        mean_sq_BxLxGx1 = jnp.mean(jnp.square(y_BxLxGxW), axis=-1, keepdims=True)
        y_BxLxI = (y_BxLxGxW * jax.lax.rsqrt(mean_sq_BxLxGx1 + self.norm_eps)).reshape(
            batch, seq_len, inner)
        norm_weight_I = self._param("norm_weight", nn.initializers.ones, (inner,), ("mlp",))
        y_BxLxI = y_BxLxI * norm_weight_I.astype(f32)
        return torch_dense(self, dim, ("mlp", "embed"), "out_proj",
                           self.use_bias)(y_BxLxI.astype(self.dtype))

    def flops(self, dim: int, seq_len: int) -> int:
        """Forward FLOPs per sequence (I = expand D, H heads of width P, G groups, N = d_state,
        K = d_conv, E = 2I + 2GN + H): in-projection 2 L D E; short conv 2 K L (I + 2GN) and its
        SiLU L (I + 2GN); dt bias and softplus 2 L H; dt A and its exp 2 L H; k = dt B, L H N;
        the recurrence 5 L I N (per state element: decay 1, outer product and add 2, C readout 2);
        the skip 2 L I; the gate SiLU(z) and product 2 L I; the RMSNorm 4 L I (square and sum 2,
        normalise 1, weight 1); out-projection 2 L I D."""
        inner, heads = self.sizes(dim)
        n = self.d_state
        conv_channels = inner + 2 * self.n_groups * n
        return int(dense_flops(seq_len, dim, inner + conv_channels + heads)
                   + short_conv_flops(self.d_conv, seq_len, conv_channels)
                   + seq_len * conv_channels
                   + 4 * seq_len * heads + seq_len * heads * n
                   + 5 * seq_len * inner * n
                   + (2 + 2 + 4) * seq_len * inner
                   + dense_flops(seq_len, inner, dim))

    def state_size(self, dim: int, seq_len: int) -> int:
        """Numbers kept per sequence to generate the next token, independent of L: the SSM states
        H * P * N = I * N plus the short conv's tail (d_conv - 1) * (I + 2 G N).
        Default at D=128: 256 * 4 + 3 * (256 + 8) = 1816."""
        inner, _ = self.sizes(dim)
        return int(inner * self.d_state
                   + short_conv_state(self.d_conv, inner + 2 * self.n_groups * self.d_state))


register_layer("mamba2", Mamba2, {"d_state": 4, "d_conv": 4, "expand": 2, "headdim": 16,
                                  "n_groups": 1})

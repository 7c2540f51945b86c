"""DeltaNet and Gated DeltaNet: linear attention with the delta-rule state update.

DeltaNet (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear Transformers with the Delta
Rule over Sequence Length", arXiv 2406.06484) and Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024,
arXiv 2412.06464), as the flash-linear-attention layers that accompany both papers. On x [B, L, D]
with H heads of key width K and value width V:
    q, k, v = silu(short causal conv_4(x W_q)), silu(conv_4(x W_k)), silu(conv_4(x W_v))  [H, K|V]
    q, k    = q / ||q|| / sqrt(K),  k / ||k||         (per head; 1/sqrt(K) as the papers' kernels)
    beta_t  = sigmoid(x_t W_beta)                                  [H], the write strength
    g_t     = -exp(A_log) * softplus(x_t W_alpha + dt_bias)        [H], log gate (gated only)
    S_t     = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = q_t^T S_t
              (`mad_jax.ops.delta_rule`; DeltaNet has g = 0)
    DeltaNet:       y_t = [RMSNorm_head(o_t)] W_o
    Gated DeltaNet: y_t = [RMSNorm_head(o_t) * silu(x_t W_g)] W_o
The per-head RMSNorm has one weight vector [V] shared by the heads. The gate's A = exp(A_log) is
drawn from U(0, 16) per head and dt_bias is softplus^{-1}(dt), dt log-uniform in [1e-3, 1e-1], as
Mamba-2's decay (the Gated DeltaNet layer's init). Projections and short convolutions (no bias)
start from PyTorch's defaults, as every MAD layer here; A_log and dt_bias are not Linear weights,
so the autoencoder backbone keeps their init.

Defaults at width 128: 8 heads of K = V = 16, for equal state with the paper's recurrent MAD layers
(`mh-gated-linear-attention`, `rwkv5/6-time-mixer`: 8 heads of 16 x 16, 2048 numbers). The delta
rule's [K, V] state holds at most K independent key directions per head, so fewer, wider heads
(e.g. num_heads=2, head_dim=64, a 4x larger state) trade state for recall; the Gated DeltaNet
paper's expand_v = 2 doubles V and the state (`expand_v=2.0`).
"""
from __future__ import annotations

import math
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

_F32 = jnp.float32


def a_log_uniform_init(a_min: float, a_max: float) -> nn.initializers.Initializer:
    """A_log = log(A), A ~ U(a_min, a_max) per head (Mamba-2 / Gated DeltaNet)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = _F32) -> jax.Array:
        # Open at a_min = 0: draw from (tiny, a_max] so the log stays finite.
        a = jax.random.uniform(key, shape, _F32, a_min, a_max)
        return jnp.log(jnp.maximum(a, jnp.finfo(_F32).tiny)).astype(dtype)

    return init


def l2_normalize(x_BxLxHxK: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
    """x / sqrt(sum x^2 + eps) over the last axis, in float32."""
    x = x_BxLxHxK.astype(_F32)
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


class DeltaNet(nn.Module):
    """DeltaNet (gated=False) or Gated DeltaNet (gated=True); see the module docstring.

    Fields: num_heads H (8), head_dim K (16), expand_v (V = expand_v * K; 1), conv_size (4),
    norm_eps (RMSNorm epsilon, 1e-5), gated (scalar decay gate and silu output gate),
    a_min / a_max (A = exp(A_log) ~ U(0, 16)), dt_min / dt_max / dt_init_floor (dt_bias init),
    chunk_size and kernel_impl (passed to `mad_jax.ops.delta_rule`).
    The log gate [B, H, L] (gated) and beta [B, H, L] are sown under "intermediates".
    """

    num_heads: int = 8
    head_dim: int = 16
    expand_v: float = 1.0
    conv_size: int = 4
    norm_eps: float = 1e-5
    gated: bool = False
    a_min: float = 0.0
    a_max: float = 16.0
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    chunk_size: int = 64
    kernel_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def sizes(self) -> tuple[int, int, int]:
        """(H, K, V): heads and per-head key and value widths."""
        value_dim = self.expand_v * self.head_dim
        if value_dim != int(value_dim):
            raise ValueError(f"expand_v * head_dim = {value_dim} must be an integer; "
                             "change expand_v or head_dim")
        return self.num_heads, self.head_dim, int(value_dim)

    def _conv(self, x_BxLxC: jnp.ndarray, name: str) -> jnp.ndarray:
        y = ShortConv(self.conv_size, use_bias=False, dtype=self.dtype,
                      param_dtype=self.param_dtype, name=name)(x_BxLxC)
        return jax.nn.silu(y)

    def _head_param(self, name, init):
        return self.param(name, nn.with_logical_partitioning(init, ("heads",)), (self.num_heads,),
                          self.param_dtype).astype(_F32)

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        batch, seq_len, dim = x_BxLxD.shape
        heads, dk, dv = self.sizes()
        x_BxLxD = x_BxLxD.astype(self.dtype)

        def project(features, axes, name):
            return torch_dense(self, features, axes, name)(x_BxLxD)

        q_BxLxC = self._conv(project(heads * dk, ("embed", "mlp"), "q_proj"), "q_conv")
        k_BxLxC = self._conv(project(heads * dk, ("embed", "mlp"), "k_proj"), "k_conv")
        v_BxLxC = self._conv(project(heads * dv, ("embed", "mlp"), "v_proj"), "v_conv")
        q_BxLxHxK = l2_normalize(q_BxLxC.reshape(batch, seq_len, heads, dk)) / math.sqrt(dk)
        k_BxLxHxK = l2_normalize(k_BxLxC.reshape(batch, seq_len, heads, dk))
        v_BxLxHxV = v_BxLxC.reshape(batch, seq_len, heads, dv).astype(_F32)
        beta_BxLxH = jax.nn.sigmoid(project(heads, ("embed", "heads"), "b_proj").astype(_F32))
        self.sow("intermediates", "beta", heads_first(beta_BxLxH))

        log_gate_BxHxL = None
        if self.gated:
            a_log_H = self._head_param("A_log", a_log_uniform_init(self.a_min, self.a_max))
            dt_bias_H = self._head_param(
                "dt_bias", dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor))
            alpha_BxLxH = project(heads, ("embed", "heads"), "a_proj").astype(_F32)
            log_gate_BxLxH = -jnp.exp(a_log_H) * jax.nn.softplus(alpha_BxLxH + dt_bias_H)
            log_gate_BxHxL = heads_first(log_gate_BxLxH)
            self.sow("intermediates", "log_gate", log_gate_BxHxL)

        o_BxHxLxV = ops.delta_rule(heads_first(q_BxLxHxK), heads_first(k_BxLxHxK),
                                   heads_first(v_BxLxHxV), heads_first(beta_BxLxH),
                                   log_gate_BxHxL=log_gate_BxHxL, chunk_size=self.chunk_size,
                                   impl=self.kernel_impl)
        o_BxLxHxV = from_heads_first(o_BxHxLxV)

        # Per-head RMSNorm in float32, one weight vector shared by the heads.
        scale_V = self.param("o_norm", nn.with_logical_partitioning(nn.initializers.ones, ("kv",)),
                             (dv,), self.param_dtype).astype(_F32)
        mean_sq_BxLxHx1 = jnp.mean(jnp.square(o_BxLxHxV), axis=-1, keepdims=True)
        o_BxLxHxV = (o_BxLxHxV * jax.lax.rsqrt(mean_sq_BxLxHx1 + self.norm_eps)
                     * scale_V).astype(self.dtype)
        if self.gated:
            gate_BxLxC = project(heads * dv, ("embed", "mlp"), "g_proj")
            o_BxLxHxV = o_BxLxHxV * jax.nn.silu(gate_BxLxC).reshape(o_BxLxHxV.shape)
        o_BxLxC = o_BxLxHxV.reshape(batch, seq_len, heads * dv)
        return torch_dense(self, dim, ("mlp", "embed"), "o_proj")(o_BxLxC)

    def flops(self, dim: int, seq_len: int) -> int:
        """Forward FLOPs per sequence (H heads, C_k = H*K, C_v = H*V):
        q/k/v projections 2*L*D*(2 C_k + C_v), beta projection 2*L*D*H, three short convs
        (2 * conv_size per element) and their SiLUs (1 per element); L2 norms of q and k (3 per
        element: square-sum, scale) and the 1/sqrt(K) scale (1 per q element); sigmoid(beta)
        (1 per head and step); the recurrence per step and head: k^T S 2*K*V, u = beta (v - .)
        2*V, the rank-one write 2*K*V, the readout q^T S 2*K*V; RMSNorm (3 per element);
        the output projection 2*L*C_v*D. Gated adds the alpha projection 2*L*D*H, the gate
        (exp, softplus, product: 3 per head and step), the state decay K*V per step and head,
        and the output gate: projection 2*L*D*C_v, SiLU and product (2 per element)."""
        heads, dk, dv = self.sizes()
        ck, cv = heads * dk, heads * dv
        total = (dense_flops(seq_len, dim, 2 * ck + cv) + dense_flops(seq_len, dim, heads)
                 + short_conv_flops(self.conv_size, seq_len, 2 * ck + cv)
                 + seq_len * (2 * ck + cv)
                 + 3 * seq_len * 2 * ck + seq_len * ck + seq_len * heads
                 + seq_len * heads * (6 * dk * dv + 2 * dv)
                 + 3 * seq_len * cv + dense_flops(seq_len, cv, dim))
        if self.gated:
            total += (dense_flops(seq_len, dim, heads) + 3 * seq_len * heads
                      + seq_len * heads * dk * dv
                      + dense_flops(seq_len, dim, cv) + 2 * seq_len * cv)
        return int(total)

    def state_size(self, dim: int, seq_len: int) -> int:
        """Numbers kept per sequence, independent of L: the H * K * V delta-rule state plus the
        short convs' tails (conv_size - 1) * (2 H K + H V).
        Default at D=128: 2048 + 3 * 384 = 3200."""
        heads, dk, dv = self.sizes()
        return int(heads * dk * dv + short_conv_state(self.conv_size, heads * (2 * dk + dv)))


register_layer("deltanet", DeltaNet, {"num_heads": 8, "head_dim": 16, "gated": False})
register_layer("gated-deltanet", DeltaNet, {"num_heads": 8, "head_dim": 16, "gated": True})

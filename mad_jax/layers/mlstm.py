"""mLSTM: xLSTM's matrix-memory LSTM and its pre-up-projection block (Beck et al. 2024, arXiv
2405.04517), after NX-AI/xlstm `mLSTMLayer` / `mLSTMCell`.

The cell, per head (q_t, k_t [d], v_t [d]; k scaled by 1/sqrt(d); gate pre-activations i~_t, f~_t
scalars; memory C [d, d], normaliser n [d], stabiliser m):
    m_t = max(log sigmoid(f~_t) + m_{t-1}, i~_t),                        m_0 = -inf
    i_t = exp(i~_t - m_t),   f_t = exp(log sigmoid(f~_t) + m_{t-1} - m_t)   (both in [0, 1])
    C_t = f_t C_{t-1} + i_t v_t k_t^T,   n_t = f_t n_{t-1} + i_t k_t
    h_t = (C_t q_t) / (max(|n_t^T q_t|, exp(-m_t)) + eps)
The exponential input gate exp(i~) is carried as exp(i~ - m) times exp(m): the stabilised states are
the plain ones times exp(-m_t), and exp(-m_t) in the floor is the plain floor 1 on the same scale,
so h_t does not depend on m except through eps. m_0 = -inf makes m_t = max_{s<=t}(F_{s..t} + i~_s)
(F the summed log forget gates over (s, t]): the row-wise stabiliser of the paper's parallel form,
so the chunked and the step-by-step forms below compute the same function, eps included (the
xLSTM code's decoding step starts from m_0 = 0, which differs from its parallel form in the eps
term only).

Chunked form (`mlstm_chunked`): with m computed first (a cumulative max), the stabilised
recurrence is decayed linear attention with the scalar log decay log sigmoid(f~_t) + m_{t-1} - m_t
(<= 0) per head and keys exp(i~_t - m_t) k_t, so C_t q_t and n_t^T q_t come from one call of the
shared chunked op `mad_jax.ops.linear_attention` on the values [v, 1]. Every exponent it takes is
<= 0 (up to rounding). m is held constant in the gradient (h depends on it only through eps).
`mlstm_recurrent` is the step-by-step oracle.

The block, on x [B, L, D], inner width I = proj_factor * D, H heads of width d = I / H:
    x_m, z = split(x W_up)                     (W_up: D -> 2I, no bias)
    x_c    = silu(short causal depthwise conv_{conv_kernel}(x_m))   (with bias)
    q, k   = blockdiag(x_c),  v = blockdiag(x_m)  (blocks of qkv_blocksize, one map each, no bias)
    i~, f~ = [q, k, v] W_i + b_i,  [q, k, v] W_f + b_f          (3I -> H each)
    h      = LayerNorm_heads(cell(q, k, v, i~, f~)) * w_norm     (per-head norm, no bias)
    y      = ((h + skip * x_c) * silu(z)) W_down        (learnable skip [I]; W_down: I -> D)
The output gate of the block is silu(z), as in the xLSTM code's block.

Initialisation: W_up, the block-diagonal maps and W_down PyTorch's Linear default (plain
projections, as in every MAD layer; the xLSTM code uses its small-init / Wang init); the conv
PyTorch's Conv1d default; as the xLSTM code: gate weights 0, b_f = linspace(3, 6) over heads (forget
gates start near 1), b_i ~ N(0, 0.1), skip 1, norm weight 1. The gate parameters, skip and norm
weight are not marked as Linear, so the autoencoder backbone keeps their init.
The gate projections, the stabiliser, the cell and the norm run in float32.

Defaults at D = 128 (proj_factor 2, conv 4, blocksize 4: the xLSTM code's; 32 heads of width 8):
the xLSTM code's 4 heads give each head a 64 x 64 memory, 16,384 numbers at D = 128, eight times
any recurrent layer of the MAD zoo. With heads of width 8 the matrix memory is I * d = 2,048, the
matrix state of `mh-gated-linear-attention` and the RWKV time mixers (8 heads of 16 x 16) at
D = 128, plus the normaliser I, the stabiliser H and the conv tail 3 I: 3,104 numbers in all
(Mamba: 1,792). Parameters at D = 128: 152,384.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mad_jax import ops
from mad_jax.layers.accounting import dense_flops
from mad_jax.layers.heads import from_heads_first, heads_first
from mad_jax.layers.initializers import torch_dense, torch_linear_init
from mad_jax.layers.registry import register_layer
from mad_jax.layers.short_conv import ShortConv, short_conv_flops, short_conv_state

_F32 = jnp.float32


def _stabiliser(log_f_BxHxL: jnp.ndarray, i_pre_BxHxL: jnp.ndarray) -> jnp.ndarray:
    """m_t = max(log_f_t + m_{t-1}, i_t) from m_0 = -inf, i.e. max_{s<=t}(F_t - F_s + i_s) with F
    the inclusive cumulative log forget gate: F_t + cummax_{s<=t}(i_s - F_s).

    Rounding in m does not move h: the log decays taken from m telescope, so the state, the keys
    and the floor exp(-m) all carry the same computed m. For the same reason h depends on m only
    through eps (h = C~ q / (max(|n~^T q|, 1) + eps exp(m)) in the plain states), so m is held
    constant in the gradient: exact up to a relative eps / |k^T q| term, and it spares the
    backward pass the cumulative max.
    """
    f_cum_BxHxL = jnp.cumsum(log_f_BxHxL, axis=-1)
    m_BxHxL = f_cum_BxHxL + jax.lax.cummax(i_pre_BxHxL - f_cum_BxHxL, axis=i_pre_BxHxL.ndim - 1)
    return jax.lax.stop_gradient(m_BxHxL)


def mlstm_chunked(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, i_pre_BxHxL, f_pre_BxHxL, *, eps=1e-6,
                  chunk_size=64, impl="auto"):
    """The stabilised mLSTM cell (module docstring) through the chunked `ops.linear_attention`.

    q, k: [B, H, L, K]; v: [B, H, L, V]; i_pre, f_pre: [B, H, L] gate pre-activations.
    Keys are scaled by 1/sqrt(K) here. Returns h [B, H, L, V] in float32.
    """
    q, k, v = (a.astype(_F32) for a in (q_BxHxLxK, k_BxHxLxK, v_BxHxLxV))
    i_pre, log_f = i_pre_BxHxL.astype(_F32), jax.nn.log_sigmoid(f_pre_BxHxL.astype(_F32))
    head_k = q.shape[-1]
    m_BxHxL = _stabiliser(log_f, i_pre)
    m_prev_BxHxL = jnp.pad(m_BxHxL[..., :-1], ((0, 0), (0, 0), (1, 0)))
    # The state is zero before step 1, so its decay there is immaterial: 0 instead of -inf keeps
    # the op's span sums finite. Elsewhere the log decay is <= 0 up to rounding (never clamped:
    # a clamp would break the telescoping that makes rounding in m harmless).
    first_BxHxL = (jnp.arange(q.shape[2]) == 0)[None, None, :]
    log_decay_BxHxL = jnp.where(first_BxHxL, 0.0, log_f + m_prev_BxHxL - m_BxHxL)
    k_scaled_BxHxLxK = k * (jnp.exp(i_pre - m_BxHxL)[..., None] * head_k ** -0.5)
    v_ones_BxHxLxV1 = jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), _F32)], axis=-1)
    o_BxHxLxV1 = ops.linear_attention(
        q, k_scaled_BxHxLxK, v_ones_BxHxLxV1,
        log_decay_BxHxLxK=jnp.broadcast_to(log_decay_BxHxL[..., None], q.shape),
        chunk_size=chunk_size, impl=impl)
    num_BxHxLxV, qn_BxHxL = o_BxHxLxV1[..., :-1], o_BxHxLxV1[..., -1]
    denom_BxHxL = jnp.maximum(jnp.abs(qn_BxHxL), jnp.exp(-m_BxHxL)) + eps
    return num_BxHxLxV / denom_BxHxL[..., None]


def mlstm_recurrent(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, i_pre_BxHxL, f_pre_BxHxL, *, eps=1e-6):
    """Oracle: the stabilised cell step by step (lax.scan over time), in float32 or wider (float64
    inputs under jax_enable_x64 run in float64). Shapes as `mlstm_chunked`."""
    dtype = jnp.promote_types(q_BxHxLxK.dtype, _F32)
    batch, heads, _, head_k = q_BxHxLxK.shape
    head_v = v_BxHxLxV.shape[-1]
    seqs = [jnp.moveaxis(a.astype(dtype), 2, 0)
            for a in (q_BxHxLxK, k_BxHxLxK, v_BxHxLxV, i_pre_BxHxL, f_pre_BxHxL)]

    def step(carry, inputs):
        c_BxHxVxK, n_BxHxK, m_BxH = carry
        q_BxHxK, k_BxHxK, v_BxHxV, i_BxH, f_BxH = inputs
        log_f_BxH = jax.nn.log_sigmoid(f_BxH)
        m_new = jnp.maximum(log_f_BxH + m_BxH, i_BxH)
        forget, inp = jnp.exp(log_f_BxH + m_BxH - m_new), jnp.exp(i_BxH - m_new)
        k_BxHxK = k_BxHxK * head_k ** -0.5
        c_new = (forget[..., None, None] * c_BxHxVxK
                 + inp[..., None, None] * v_BxHxV[..., :, None] * k_BxHxK[..., None, :])
        n_new = forget[..., None] * n_BxHxK + inp[..., None] * k_BxHxK
        num_BxHxV = jnp.einsum("bhvk,bhk->bhv", c_new, q_BxHxK)
        qn_BxH = jnp.einsum("bhk,bhk->bh", n_new, q_BxHxK)
        denom_BxH = jnp.maximum(jnp.abs(qn_BxH), jnp.exp(-m_new)) + eps
        return (c_new, n_new, m_new), num_BxHxV / denom_BxH[..., None]

    carry0 = (jnp.zeros((batch, heads, head_v, head_k), dtype),
              jnp.zeros((batch, heads, head_k), dtype),
              jnp.full((batch, heads), -jnp.inf, dtype))
    _, h_LxBxHxV = jax.lax.scan(step, carry0, seqs)
    return jnp.moveaxis(h_LxBxHxV, 0, 2)


def _linspace_init(start: float, stop: float) -> nn.initializers.Initializer:
    """linspace(start, stop) over the (single) axis: the xLSTM code's forget-gate bias."""
    def init(key, shape, dtype=_F32):
        del key
        return jnp.asarray(np.linspace(start, stop, int(np.prod(shape))), dtype).reshape(shape)
    return init


class HeadwiseLinear(nn.Module):
    """Block-diagonal map of the last axis: blocks of `blocksize` channels, one [b, b] map each
    (the xLSTM code's `LinearHeadwiseExpand`). kernel [I / b, b, b], PyTorch Linear init
    (fan_in b)."""

    blocksize: int = 4
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxI: jnp.ndarray) -> jnp.ndarray:
        batch, seq_len, inner = x_BxLxI.shape
        blocks, b = inner // self.blocksize, self.blocksize
        init = torch_linear_init(in_axis=-2, out_axis=-1, batch_axis=(0,))
        w_NxBxB = self.param("kernel", nn.with_logical_partitioning(init, ("mlp", None, None)),
                             (blocks, b, b), self.param_dtype)
        x_BxLxNxb = x_BxLxI.astype(self.dtype).reshape(batch, seq_len, blocks, b)
        y_BxLxNxb = jnp.einsum("blni,nio->blno", x_BxLxNxb, w_NxBxB.astype(self.dtype))
        return y_BxLxNxb.reshape(batch, seq_len, inner)


class MLSTM(nn.Module):
    """xLSTM's mLSTM block (see the module docstring).

    Fields: proj_factor (2), num_heads H (32), conv_kernel (4), qkv_blocksize (4), use_bias on the
    up/down projections (False), igate_bias_std (0.1), fgate_bias_range ((3, 6)), norm_eps of the
    per-head norm (1e-5), eps of the readout (1e-6), chunk_size and kernel_impl: passed to
    `mad_jax.ops.linear_attention`.
    """

    proj_factor: float = 2.0
    num_heads: int = 32
    conv_kernel: int = 4
    qkv_blocksize: int = 4
    use_bias: bool = False
    igate_bias_std: float = 0.1
    fgate_bias_range: tuple[float, float] = (3.0, 6.0)
    norm_eps: float = 1e-5
    eps: float = 1e-6
    chunk_size: int = 64
    kernel_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def sizes(self, dim: int) -> tuple[int, int]:
        """(inner width I = proj_factor * D, head width d = I / H); raises if they do not divide."""
        inner = int(round(self.proj_factor * dim))
        if inner % self.num_heads or inner % self.qkv_blocksize:
            raise ValueError(f"inner width proj_factor*dim = {inner} must be a multiple of "
                             f"num_heads={self.num_heads} and qkv_blocksize={self.qkv_blocksize}")
        return inner, inner // self.num_heads

    def _gate(self, name: str, bias_init: nn.initializers.Initializer) -> nn.Dense:
        # Zero weights as the xLSTM code; float32 because the gates feed exponentials.
        return nn.Dense(self.num_heads, dtype=_F32, param_dtype=self.param_dtype, name=name,
                        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                 ("mlp", "heads")),
                        bias_init=nn.with_logical_partitioning(bias_init, ("heads",)))

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        batch, seq_len, dim = x_BxLxD.shape
        inner, head_dim = self.sizes(dim)
        heads = self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        up_BxLx2I = torch_dense(self, 2 * inner, ("embed", "mlp"), "proj_up",
                                self.use_bias)(x_BxLxD.astype(self.dtype))
        xm_BxLxI, z_BxLxI = jnp.split(up_BxLx2I, 2, axis=-1)
        xc_BxLxI = jax.nn.silu(ShortConv(self.conv_kernel, use_bias=True, name="conv1d",
                                         **kw)(xm_BxLxI))
        q_BxLxI = HeadwiseLinear(self.qkv_blocksize, name="q_proj", **kw)(xc_BxLxI)
        k_BxLxI = HeadwiseLinear(self.qkv_blocksize, name="k_proj", **kw)(xc_BxLxI)
        v_BxLxI = HeadwiseLinear(self.qkv_blocksize, name="v_proj", **kw)(xm_BxLxI)

        gate_in_BxLx3I = jnp.concatenate([q_BxLxI, k_BxLxI, v_BxLxI], axis=-1).astype(_F32)
        std, (f_lo, f_hi) = self.igate_bias_std, self.fgate_bias_range
        i_pre_BxLxH = self._gate("igate", nn.initializers.normal(std))(gate_in_BxLx3I)
        f_pre_BxLxH = self._gate("fgate", _linspace_init(f_lo, f_hi))(gate_in_BxLx3I)

        def split_heads(a_BxLxI):  # [B, L, I] -> [B, H, L, d] in float32
            return heads_first(a_BxLxI.reshape(batch, seq_len, heads, head_dim), _F32)

        h_BxHxLxd = mlstm_chunked(split_heads(q_BxLxI), split_heads(k_BxLxI), split_heads(v_BxLxI),
                                  heads_first(i_pre_BxLxH), heads_first(f_pre_BxLxH),
                                  eps=self.eps, chunk_size=self.chunk_size, impl=self.kernel_impl)
        # Per-head LayerNorm without bias (the xLSTM code's MultiHeadLayerNorm), in float32.
        mean_BxHxLx1 = jnp.mean(h_BxHxLxd, axis=-1, keepdims=True)
        var_BxHxLx1 = jnp.mean(jnp.square(h_BxHxLxd - mean_BxHxLx1), axis=-1, keepdims=True)
        h_BxHxLxd = (h_BxHxLxd - mean_BxHxLx1) * jax.lax.rsqrt(var_BxHxLx1 + self.norm_eps)
        h_BxLxI = from_heads_first(h_BxHxLxd).reshape(batch, seq_len, inner)
        norm_weight_I = self.param("norm_weight", nn.with_logical_partitioning(
            nn.initializers.ones, ("mlp",)), (inner,), self.param_dtype)
        skip_I = self.param("learnable_skip", nn.with_logical_partitioning(
            nn.initializers.ones, ("mlp",)), (inner,), self.param_dtype)
        h_BxLxI = (h_BxLxI * norm_weight_I.astype(_F32)
                   + skip_I.astype(_F32) * xc_BxLxI.astype(_F32))
        h_BxLxI = h_BxLxI * jax.nn.silu(z_BxLxI.astype(_F32))
        return torch_dense(self, dim, ("mlp", "embed"), "proj_down",
                           self.use_bias)(h_BxLxI.astype(self.dtype))

    def flops(self, dim: int, seq_len: int) -> int:
        """Forward FLOPs per sequence (I = proj_factor D, H heads of width d, b = qkv_blocksize,
        K = conv_kernel): up-projection 2 L D 2I; short conv 2 K L I and its SiLU L I; the three
        block-diagonal maps 3 * 2 L I b; the two gate maps 2 * 2 L 3I H; per head and step 8 L H
        for the gates and stabiliser (log-sigmoid 1, m update 2, log decay 2, exp(i~ - m) 2,
        exp(-m) 1); key scaling 2 L I; the recurrence on [v, 1] 5 L I (d + 1) (per state element:
        decay 1, outer product and add 2, readout 2); readout normaliser 3 L H and division L I;
        per-head LayerNorm 6 L I (mean 1, centre 1, square and sum 2, scale 1, weight 1); the skip
        2 L I; the gate SiLU(z) and product 2 L I; down-projection 2 L I D."""
        inner, head_dim = self.sizes(dim)
        heads = self.num_heads
        return int(dense_flops(seq_len, dim, 2 * inner)
                   + short_conv_flops(self.conv_kernel, seq_len, inner) + seq_len * inner
                   + 3 * 2 * seq_len * inner * self.qkv_blocksize
                   + 2 * dense_flops(seq_len, 3 * inner, heads)
                   + (8 + 3) * seq_len * heads
                   + 5 * seq_len * inner * (head_dim + 1)
                   + (2 + 1 + 6 + 2 + 2) * seq_len * inner
                   + dense_flops(seq_len, inner, dim))

    def state_size(self, dim: int, seq_len: int) -> int:
        """Numbers kept per sequence to generate the next token, independent of L: the memories
        H * d * d = I * d, the normalisers I, the stabilisers H and the short conv's tail
        (conv_kernel - 1) * I. Default at D=128: 2048 + 256 + 32 + 768 = 3104."""
        inner, head_dim = self.sizes(dim)
        return int(inner * head_dim + inner + self.num_heads
                   + short_conv_state(self.conv_kernel, inner))


register_layer("mlstm", MLSTM, {"proj_factor": 2.0, "num_heads": 32, "conv_kernel": 4,
                                "qkv_blocksize": 4})

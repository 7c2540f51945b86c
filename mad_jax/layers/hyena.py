"""Hyena (Poli et al. 2023) and multi-head Hyena, after athms/mad-lab `hyena.py`.

Hyena of order N on an input u [B, L, D], with inner width I = inner_factor * D:
  1. projection: p = u W_in + b_in, of width (N+1) I / proj_groups, tiled proj_groups times to
     (N+1) I channels (the reference's "tied projection groups": `u.repeat(1, 1, proj_groups)`);
  2. short filter: a causal depthwise convolution of length 3 on all (N+1) I channels;
  3. split into gates x_0 .. x_{N-1} and value v (I channels each), then the recurrence
        for x_i in x_{N-1}, ..., x_1:   v <- h_i * (v x_i) + bias_i (v x_i)
     (h_i: an implicit long filter per channel, `*`: causal convolution via
     `mad_jax.ops.causal_conv`, bias_i: Hyena's learned skip term D), then y = v x_0;
  4. output projection y W_out + b_out.
For order 2 this is the reference's `HyenaOperator.forward`: y = x_0 (h * (v x_1) + D v x_1).

Multi-head Hyena (Massaroli et al. 2023, "Laughing Hyena"; the MAD paper's `mh-hyena`): order 2,
with q = x_0, value = x_1 and k = v split into H heads of width d = I / H; per head the outer
product k_t value_t^T [d, d] is convolved with the head's long filter (plus skip D_h), and the
output is q_t contracted with the result: y_t = q_t^T (sum_{s<=t} h[t-s] k_s value_s^T + D k_t
value_t^T), a linear-attention-like map whose "attention" is a learned long filter.

Initialisation follows the reference: Linear weights U(+-1/sqrt(fan_in)) with zero biases (the
reference backbone zeroes Linear biases; its autoencoder re-draws the Linear weights, see
`initializers`), the short filter like PyTorch's Conv1d, the skip D from N(0, 1) (`torch.randn`),
the filter's positional embedding as `hyena_filter` describes.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mad_jax import ops
from mad_jax.layers.accounting import dense_flops, fft_conv_flops
from mad_jax.layers.initializers import torch_dense
from mad_jax.layers.hyena_filter import ImplicitFilter, implicit_filter_flops
from mad_jax.layers.registry import register_layer
from mad_jax.layers.short_conv import ShortConv, short_conv_flops, short_conv_state


def hyena_recurrence(gates: Sequence[jnp.ndarray], v_BxLxI: jnp.ndarray, h_LxC: jnp.ndarray,
                     bias_C: jnp.ndarray, impl: str) -> jnp.ndarray:
    """Hyena's gated long-convolution recurrence (step 3 above).

    gates: x_0 .. x_{N-1}, each [B, L, I]; v: [B, L, I]; h: [L, (N-1) I] and bias [(N-1) I],
    with channel index c = i * (N-1) + o for inner channel i and recurrence step o (the
    reference's "(v o)" layout). Convolutions and skips are in float32; returns v's dtype.
    """
    n_conv = len(gates) - 1
    inner = v_BxLxI.shape[-1]
    h_LxIxO = h_LxC.astype(jnp.float32).reshape(h_LxC.shape[0], inner, n_conv)
    bias_IxO = bias_C.astype(jnp.float32).reshape(inner, n_conv)
    for o, x_BxLxI in enumerate(reversed(gates[1:])):
        z_BxLxI = (v_BxLxI * x_BxLxI).astype(jnp.float32)
        y_BxLxI = ops.causal_conv(z_BxLxI, h_LxIxO[:, :, o], impl=impl) + z_BxLxI * bias_IxO[:, o]
        v_BxLxI = y_BxLxI.astype(v_BxLxI.dtype)
    return v_BxLxI * gates[0]


class _HyenaBase(nn.Module):
    """Fields and pieces shared by Hyena and multi-head Hyena (see the module docstring)."""

    order: int = 2
    inner_factor: int = 4
    proj_groups: int = 4
    short_filter_order: int = 3
    filter_order: int = 4
    filter_emb_dim: int = 3
    filter_num_inner: int = 2
    filter_sin_freq: float = 1.0
    max_length: int | None = None
    kernel_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def widths(self, dim: int) -> tuple[int, int, int]:
        """(inner width I, short-filter width (N+1) I, projection width (N+1) I / proj_groups)."""
        if self.order < 2:
            raise ValueError(f"Hyena order must be at least 2, got {self.order}")
        inner = self.inner_factor * dim
        total = (self.order + 1) * inner
        if total % self.proj_groups:
            raise ValueError(f"(order+1) * inner width {total} is not divisible by "
                             f"proj_groups {self.proj_groups}")
        return inner, total, total // self.proj_groups

    def filter_channels(self, dim: int) -> int:
        raise NotImplementedError

    def project(self, x_BxLxD: jnp.ndarray) -> list[jnp.ndarray]:
        """Steps 1-2: projection, group tiling and short filter; returns the N+1 chunks."""
        _, total, proj = self.widths(x_BxLxD.shape[-1])
        in_proj = torch_dense(self, proj, ("embed", "mlp"), "in_proj", use_bias=True)
        p_BxLxP = in_proj(x_BxLxD.astype(self.dtype))
        u_BxLxT = jnp.tile(p_BxLxP, (1, 1, self.proj_groups))
        u_BxLxT = ShortConv(self.short_filter_order, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="short_filter")(u_BxLxT)
        return jnp.split(u_BxLxT, self.order + 1, axis=-1)

    def long_filter(self, dim: int, seq_len: int) -> tuple[jnp.ndarray, jnp.ndarray]:
        """The implicit long filter h [L, C] and skip D [C] (float32), C = filter_channels(dim)."""
        channels = self.filter_channels(dim)
        h_LxC = ImplicitFilter(channels, max_length=self.max_length, ffn_width=self.filter_order,
                               emb_dim=self.filter_emb_dim, num_inner=self.filter_num_inner,
                               sin_freq=self.filter_sin_freq, param_dtype=self.param_dtype,
                               name="filter")(seq_len)
        bias_C = self.param("bias", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                 ("mlp",)),
                            (channels,), self.param_dtype)
        return h_LxC, bias_C

    def _common_flops(self, dim: int, seq_len: int) -> int:
        inner, total, proj = self.widths(dim)
        return int(dense_flops(seq_len, dim, proj) + seq_len * proj
                   + short_conv_flops(self.short_filter_order, seq_len, total)
                   + implicit_filter_flops(seq_len, self.filter_channels(dim), self.filter_order,
                                           self.filter_emb_dim, self.filter_num_inner)
                   + dense_flops(seq_len, inner, dim) + seq_len * dim)

    def _short_state(self, dim: int) -> int:
        # The tiled groups are copies, so the short filters' tails need only the last K-1
        # projections (proj numbers each), not (N+1) I.
        return short_conv_state(self.short_filter_order, self.widths(dim)[2])


class Hyena(_HyenaBase):
    """Hyena operator of order N (default 2) with implicit long filters.

    Fields (defaults are the MAD `hyena` config, configs/layers/hyena.yml):
      order: depth N of the recurrence (number of gates); inner_factor: I = inner_factor * D;
      proj_groups: tied projection groups (the projection has (N+1) I / proj_groups outputs, tiled);
      short_filter_order: length of the explicit short filter (3);
      filter_order: hidden width of the implicit filter's FFN (4); filter_emb_dim: its positional
      features (3); filter_num_inner: its hidden layers (2); filter_sin_freq: Sin init (1);
      max_length: length of the filter's trainable positional embedding, which its positions are
      normalised by; the backbone sets the model's max_length (None: the length at init);
      kernel_impl: passed to `mad_jax.ops.causal_conv`.
    """

    def filter_channels(self, dim: int) -> int:
        return (self.order - 1) * self.widths(dim)[0]

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        _, seq_len, dim = x_BxLxD.shape
        *gates, v_BxLxI = self.project(x_BxLxD)
        h_LxC, bias_C = self.long_filter(dim, seq_len)
        y_BxLxI = hyena_recurrence(gates, v_BxLxI, h_LxC, bias_C, self.kernel_impl)
        return torch_dense(self, dim, ("mlp", "embed"), "out_proj", use_bias=True)(y_BxLxI)

    def flops(self, dim: int, seq_len: int) -> int:
        """Forward FLOPs per sequence: input projection 2 L D P + L P bias (P = (N+1) I / groups),
        short filter 2 K L (N+1) I, filter generation (see `implicit_filter_flops`, C = (N-1) I),
        per recurrence step a gate product L I, an FFT long convolution over I channels and the
        skip 2 L I, the final gate L I, and the output projection 2 L I D + L D."""
        inner, _, _ = self.widths(dim)
        n_conv = self.order - 1
        steps = n_conv * (seq_len * inner + fft_conv_flops(seq_len, inner) + 2 * seq_len * inner)
        return int(self._common_flops(dim, seq_len) + steps + seq_len * inner)

    def state_size(self, dim: int, seq_len: int) -> int:
        """Numbers kept per sequence to generate token L+1 after L tokens: the history of every
        long convolution's input, (N-1) * I * L (the filters span the whole sequence), plus the
        short filter's tail (K-1) * (N+1) I / proj_groups (the tiled groups repeat the same
        projections). Default at D=128: 512 L + 768."""
        inner, _, _ = self.widths(dim)
        return int((self.order - 1) * inner * seq_len + self._short_state(dim))


class MultiHeadHyena(_HyenaBase):
    """Multi-head Hyena of order 2 (see the module docstring), one long filter per head.

    Fields as `Hyena`, plus num_heads H (head width d = inner_factor * D / H). Defaults are the MAD
    `mh-hyena` config (configs/layers/mh-hyena.yml): 16 heads, inner factor 1, filter order 2; its
    operator inherits the reference's proj_groups default of 4.
    """

    num_heads: int = 16
    inner_factor: int = 1
    filter_order: int = 2

    def head_dim(self, dim: int) -> int:
        inner = self.widths(dim)[0]
        if self.order != 2:
            raise ValueError(f"multi-head Hyena is defined for order 2, got {self.order}")
        if inner % self.num_heads:
            raise ValueError(f"inner width {inner} is not divisible by num_heads {self.num_heads}")
        return inner // self.num_heads

    def filter_channels(self, dim: int) -> int:
        return self.num_heads

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        batch, seq_len, dim = x_BxLxD.shape
        heads, head_dim = self.num_heads, self.head_dim(dim)
        q_BxLxI, val_BxLxI, k_BxLxI = self.project(x_BxLxD)
        h_LxH, bias_H = self.long_filter(dim, seq_len)

        f32 = jnp.float32
        split = (batch, seq_len, heads, head_dim)
        q_BxLxHxK = q_BxLxI.reshape(split).astype(f32)
        k_BxLxHxK = k_BxLxI.reshape(split).astype(f32)
        val_BxLxHxV = val_BxLxI.reshape(split).astype(f32)
        kv_BxLxHxKxV = k_BxLxHxK[..., :, None] * val_BxLxHxV[..., None, :]
        channels = heads * head_dim * head_dim
        kv_BxLxC = kv_BxLxHxKxV.reshape(batch, seq_len, channels)
        # Every entry of a head's d x d outer product shares the head's filter and skip.
        h_LxC = jnp.repeat(h_LxH.astype(f32), head_dim * head_dim, axis=1)
        bias_C = jnp.repeat(bias_H.astype(f32), head_dim * head_dim)
        z_BxLxC = ops.causal_conv(kv_BxLxC, h_LxC, impl=self.kernel_impl) + kv_BxLxC * bias_C
        z_BxLxHxKxV = z_BxLxC.reshape(batch, seq_len, heads, head_dim, head_dim)
        y_BxLxHxV = jnp.einsum("blhk,blhkv->blhv", q_BxLxHxK, z_BxLxHxKxV)
        y_BxLxI = y_BxLxHxV.reshape(batch, seq_len, heads * head_dim).astype(self.dtype)
        return torch_dense(self, dim, ("mlp", "embed"), "out_proj", use_bias=True)(y_BxLxI)

    def flops(self, dim: int, seq_len: int) -> int:
        """Forward FLOPs per sequence: projection, short filter, filter generation (C = H) and
        output projection as in `Hyena.flops`, plus over the H d^2 outer-product channels the
        products L H d^2, an FFT long convolution and the skip 2 L H d^2, and the contraction
        with q, 2 L H d^2."""
        head_dim = self.head_dim(dim)
        channels = self.num_heads * head_dim * head_dim
        mixing = (seq_len * channels + fft_conv_flops(seq_len, channels)
                  + 2 * seq_len * channels + 2 * seq_len * channels)
        return int(self._common_flops(dim, seq_len) + mixing)

    def state_size(self, dim: int, seq_len: int) -> int:
        """Numbers kept per sequence to generate token L+1 after L tokens: the k and value
        histories 2 * I * L (the long convolution acts on their outer products, which are
        recomputed from them), plus the short filter's tail (K-1) * 3 I / proj_groups.
        Default at D=128: 256 L + 192."""
        inner, _, _ = self.widths(dim)
        return int(2 * inner * seq_len + self._short_state(dim))


register_layer("hyena", Hyena, {"order": 2, "inner_factor": 4, "proj_groups": 4,
                                "short_filter_order": 3, "filter_order": 4})
register_layer("mh-hyena", MultiHeadHyena, {"num_heads": 16, "order": 2, "inner_factor": 1,
                                            "proj_groups": 4, "short_filter_order": 3,
                                            "filter_order": 2})

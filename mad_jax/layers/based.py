"""Based's linear attention: a 2nd-order Taylor feature map of exp (Arora et al. 2024, "Simple
linear attention language models balance the recall-throughput tradeoff", arXiv 2402.18668).

Based approximates softmax attention's exp(q.k / sqrt(F)) by its Taylor polynomial of degree 2,
written as an inner product of features so that attention runs as a recurrence with a fixed-size
state. On x [B, L, D], with H heads, a small feature dim F (16) and value width V = D / H:
  q, k = x W_q, x W_k  scaled by F^(-1/4)           [B, L, H, F]  (so q.k carries 1/sqrt(F))
  v    = x W_v                                      [B, L, H, V]
  phi(z) = [1, z, (z (x) z) / sqrt(2)]              [.., E],  E = 1 + F + F^2 (273 for F = 16)
  phi(q) . phi(k) = 1 + q.k + (q.k)^2 / 2           (exactly; the outer product is flattened)
  o_t  = phi(q_t) S_t / (phi(q_t) . z_t),
  S_t  = sum_{s<=t} phi(k_s)^T v_s,   z_t = sum_{s<=t} phi(k_s)
  y    = o W_o                                      (W_o: H V -> D; no biases anywhere)
Numerator and denominator come from one call of `mad_jax.ops.linear_attention` (chunked, no
decay, float32): the values get a column of ones, whose output is phi(q_t) . z_t.

The normaliser is stable by construction: 1 + s + s^2 / 2 = ((1 + s)^2 + 1) / 2 >= 1/2 for every
score s, so phi(q_t) . z_t >= t / 2 > 0 at position t (1-based) and no epsilon is needed, unlike
feature maps without a sign (`linear-attention`'s), whose normaliser can pass through zero.

State to generate the next token: S (H E V numbers) and z (H E), i.e. (1 + F + F^2)(D + H),
independent of L. Here phi keeps the full F^2 outer product; its symmetric half (F (F + 1) / 2
products) has the same inner products and would need 1 + F + F (F + 1) / 2 = 153 features.

Initialisation: all four maps PyTorch-style Linear (U(+-1/sqrt(fan_in))), as Based's code.

Based is meant to be paired with exact local attention: the paper's architecture mixes these
layers with small sliding-window attention (and short convolutions), the linear attention giving
long-range, fixed-size recall and the window exact local token comparisons. In MAD, build the
hybrid with the existing `sliding-attention`, e.g. "based swiglu sliding-attention swiglu".

Defaults at D = 128 (registered as `based`): feature_dim 16 and one head (V = 128), the paper's
synthetic-recall (MQAR) configuration at model width 128 (HazyResearch/zoology, arxiv24_based
configs: feature_dim 16, num_heads = num_key_value_heads = 1). Iso-state with `mamba` (1,792) is
not meaningful here: the state is (1 + F + F^2)(D + H) = 35,217 numbers at D = 128, hardly moved by
the head count, and matching mamba would take F = 3, below every feature dim of the paper's recall
experiments (4 to 32, with 16 the default); the paper's trade-off is this fixed state against a
full KV cache (2 L D = 262,144 at L = 1024).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mad_jax import ops
from mad_jax.layers.accounting import dense_flops
from mad_jax.layers.dense import DenseGeneral
from mad_jax.layers.heads import from_heads_first, heads_first
from mad_jax.layers.initializers import torch_linear_init
from mad_jax.layers.registry import register_layer

_F32 = jnp.float32


def taylor_feature_map(z_XxF: jnp.ndarray) -> jnp.ndarray:
    """phi(z) = [1, z, flatten(z (x) z) / sqrt(2)] over the last axis: [..., F] -> [..., 1+F+F^2],
    so that phi(x) . phi(y) = 1 + x.y + (x.y)^2 / 2, the degree-2 Taylor polynomial of exp(x.y)."""
    outer_XxFF = (z_XxF[..., :, None] * z_XxF[..., None, :]).reshape(*z_XxF.shape[:-1], -1)
    ones_Xx1 = jnp.ones(z_XxF.shape[:-1] + (1,), z_XxF.dtype)
    return jnp.concatenate([ones_Xx1, z_XxF, outer_XxFF * (1.0 / math.sqrt(2.0))], axis=-1)


def expanded_feature_dim(feature_dim: int) -> int:
    """E = 1 + F + F^2: the width of taylor_feature_map's output."""
    return 1 + feature_dim + feature_dim * feature_dim


class Based(nn.Module):
    """Based linear attention with the Taylor feature map (see the module docstring).

    Attributes:
      num_heads: heads H; the value width per head is D / H.
      feature_dim: F, the per-head width of q and k before the feature map (16 in the paper).
      chunk_size, kernel_impl: passed to `mad_jax.ops.linear_attention`.
    """

    num_heads: int = 1
    feature_dim: int = 16
    chunk_size: int = 64
    kernel_impl: str = "auto"
    dtype: Any = _F32
    param_dtype: Any = _F32

    def head_value_dim(self, dim: int) -> int:
        """V = D / H, checked."""
        if dim % self.num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={self.num_heads}; "
                             "pick num_heads dividing the model width")
        return dim // self.num_heads

    def _project_heads(self, features: tuple[int, int], name: str) -> DenseGeneral:
        """A bias-free [D] -> [H, X] map with the PyTorch Linear init."""
        return DenseGeneral(features, use_bias=False, dtype=self.dtype,
                            param_dtype=self.param_dtype, kernel_init=torch_linear_init(),
                            kernel_axes=("embed", "heads", "kv"), name=name)

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        dim = x_BxLxD.shape[-1]
        head_v = self.head_value_dim(dim)
        qk_shape = (self.num_heads, self.feature_dim)
        x_BxLxD = x_BxLxD.astype(self.dtype)
        q_BxLxHxF = self._project_heads(qk_shape, "q_proj")(x_BxLxD)
        k_BxLxHxF = self._project_heads(qk_shape, "k_proj")(x_BxLxD)
        v_BxLxHxV = self._project_heads((self.num_heads, head_v), "v_proj")(x_BxLxD)

        # F^(-1/4) on each of q and k puts the paper's 1/sqrt(F) on q.k; the features and
        # everything after them are float32 (the op computes in float32 anyway).
        scale = self.feature_dim ** -0.25

        phi_q_BxHxLxE = heads_first(taylor_feature_map(q_BxLxHxF.astype(_F32) * scale))
        phi_k_BxHxLxE = heads_first(taylor_feature_map(k_BxLxHxF.astype(_F32) * scale))
        v_BxHxLxV = heads_first(v_BxLxHxV, _F32)
        # A column of ones after the values: its output is the normaliser phi(q_t) . z_t.
        v_ones_BxHxLxW = jnp.concatenate([v_BxHxLxV, jnp.ones(v_BxHxLxV.shape[:-1] + (1,), _F32)],
                                         axis=-1)
        o_BxHxLxW = ops.linear_attention(phi_q_BxHxLxE, phi_k_BxHxLxE, v_ones_BxHxLxW,
                                         chunk_size=self.chunk_size, impl=self.kernel_impl)
        numerator_BxHxLxV, denominator_BxHxLx1 = o_BxHxLxW[..., :-1], o_BxHxLxW[..., -1:]
        o_BxLxHxV = from_heads_first(numerator_BxHxLxV / denominator_BxHxLx1)

        out_proj = DenseGeneral(dim, axis=(-2, -1), use_bias=False, dtype=self.dtype,
                                param_dtype=self.param_dtype, kernel_init=torch_linear_init(),
                                kernel_axes=("heads", "kv", "embed"), name="out_proj")
        return out_proj(o_BxLxHxV.astype(self.dtype))

    def flops(self, dim: int, seq_len: int) -> int:
        """Forward FLOPs (H heads, F = feature_dim, E = 1 + F + F^2, V = D / H): the q and k maps
        2 * 2 L D H F, the v map 2 L D H V; the F^(-1/4) scale 2 L H F; the feature map of q and
        of k, F^2 products and their 1/sqrt(2) each, 4 L H F^2; the recurrence on values widened
        by the ones column, 2 L H E (V + 1) for the state update and again for the readout; the
        division L H V; the output map 2 L H V D."""
        head_v = self.head_value_dim(dim)
        heads, feat = self.num_heads, self.feature_dim
        expanded = expanded_feature_dim(feat)
        return int(2 * dense_flops(seq_len, dim, heads * feat)
                   + dense_flops(seq_len, dim, heads * head_v)
                   + 2 * seq_len * heads * feat + 4 * seq_len * heads * feat * feat
                   + 4 * seq_len * heads * expanded * (head_v + 1)
                   + seq_len * heads * head_v
                   + dense_flops(seq_len, heads * head_v, dim))

    def state_size(self, dim: int, seq_len: int) -> int:
        """H * E * V (the state matrices S) + H * E (the normaliser's running key-feature sum z),
        independent of L. Default at D = 128: 273 * 128 + 273 = 35,217."""
        expanded = expanded_feature_dim(self.feature_dim)
        return int(self.num_heads * expanded * self.head_value_dim(dim)
                   + self.num_heads * expanded)


register_layer("based", Based, {"num_heads": 1, "feature_dim": 16})

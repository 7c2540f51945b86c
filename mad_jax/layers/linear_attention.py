"""Linear attention and gated linear attention (GLA), single- and multi-head.

Ports of the PyTorch MAD reference (athms/mad-lab `mad/model/layers/attention_linear.py` and
`attention_gated_linear.py`, themselves adapted from flash-linear-attention). Both run their
recurrence through `mad_jax.ops.linear_attention` (float32 inside).

Linear attention (Katharopoulos et al. 2020) with the reference's "elementwise_product" feature map
(its `HadamardFeatureMap`): phi(x) = (x W1 + b1) * (x W2 + b2), two learned head_dim x head_dim maps
shared by all heads, one phi for queries and another for keys. The output is normalised as in the
reference:
    o_t = phi(q_t) S_t / (phi(q_t) . z_t + eps),
    S_t = sum_{s<=t} phi(k_s)^T v_s,   z_t = sum_{s<=t} phi(k_s).
The features are not constrained to be positive (nor are they in the reference), so the
denominator can come close to zero; `normalize=False` drops it.

GLA (Yang et al. 2023, "Gated Linear Attention Transformers with Hardware-Efficient Training"):
    alpha_t = exp(log_sigmoid(x_t W_a1 W_a2 + b_a) / gate_logit_normalizer)   in (0, 1)^K, low rank
    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,   o_t = (q_t / sqrt(K_h)) S_t
    y_t = [RMSNorm_head(o_t) * swish(x_t W_g)] W_o
The per-head norm is the reference's RMSNorm over each head's value channels with one weight vector
shared by the heads (its `fuse_norm=False` path; the GLA paper's group norm without mean centring).
Projections use the reference's Xavier-uniform init with gain 2**-2.5; biases start at zero, as the
reference's backbone re-initialises every bias.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mad_jax import ops
from mad_jax.layers import accounting
from mad_jax.layers.dense import DenseGeneral
from mad_jax.layers.heads import from_heads_first, heads_first
from mad_jax.layers.initializers import linear_weight, torch_linear_init
from mad_jax.layers.registry import register_layer

_FEATURE_MAPS = ("elementwise_product", "elu", "relu", "identity")


def _heads_in(features, kernel_init, *, dtype, param_dtype, name, use_bias=False):
    """[.., D] -> [.., H, Dh] projection with ("embed", "heads", "kv") kernel axes."""
    return DenseGeneral(
        features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
        kernel_init=kernel_init, kernel_axes=("embed", "heads", "kv"),
        bias_init=nn.initializers.zeros_init())


def _heads_out(dim, kernel_init, *, dtype, param_dtype, name):
    """[.., H, Dv] -> [.., D] projection with ("heads", "kv", "embed") kernel axes, no bias."""
    return DenseGeneral(
        dim, axis=(-2, -1), use_bias=False, dtype=dtype, param_dtype=param_dtype, name=name,
        kernel_init=kernel_init, kernel_axes=("heads", "kv", "embed"))


def _split_dims(dim: int, num_heads: int, expand_k: float, expand_v: float) -> tuple[int, int]:
    """Per-head key and value widths (K_h, V_h) for width `dim`."""
    key_dim, value_dim = int(dim * expand_k), int(dim * expand_v)
    if key_dim % num_heads or value_dim % num_heads:
        raise ValueError(f"key width {key_dim} and value width {value_dim} must be divisible by "
                         f"num_heads={num_heads}")
    return key_dim // num_heads, value_dim // num_heads


class HadamardFeatureMap(nn.Module):
    """phi(x) = (x W1 + b1) * (x W2 + b2) over the last (head) axis: the reference's
    `elementwise_product` feature map. W1, W2 start as PyTorch's nn.Linear default; b1, b2 at 0."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_XxK: jnp.ndarray) -> jnp.ndarray:
        head_dim = x_XxK.shape[-1]

        # Small [Dh, Dh] maps shared by the heads: replicated.
        kernel_init = nn.with_logical_partitioning(torch_linear_init(), (None, None))
        bias_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,))

        def layer(name):
            return nn.Dense(head_dim, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                            kernel_init=kernel_init, bias_init=bias_init)

        return layer("layer1")(x_XxK) * layer("layer2")(x_XxK)


class LinearAttention(nn.Module):
    """Causal linear attention with a feature map and the sum-normalised readout (module docstring).

    Attributes:
      num_heads: heads H.
      feature_map: "elementwise_product" (learned, the MAD default), or the parameter-free
        "elu" (elu + 1), "relu", "identity".
      tie_feature_map_qk: one learned feature map for queries and keys instead of two.
      expand_k, expand_v: key / value widths as multiples of D.
      normalize: divide by phi(q_t) . sum_{s<=t} phi(k_s) + eps, as the reference does.
      eps: added to the normaliser.
      chunk_size, kernel_impl: passed to `mad_jax.ops.linear_attention`.
    """

    num_heads: int = 1
    feature_map: str = "elementwise_product"
    tie_feature_map_qk: bool = False
    expand_k: float = 1.0
    expand_v: float = 1.0
    normalize: bool = True
    eps: float = 1e-12
    chunk_size: int = 64
    kernel_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _feature_maps(self):
        if self.feature_map == "elementwise_product":
            kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
            fmap_q = HadamardFeatureMap(**kw, name="feature_map_q")
            if self.tie_feature_map_qk:
                return fmap_q, fmap_q
            return fmap_q, HadamardFeatureMap(**kw, name="feature_map_k")
        fixed = {"elu": lambda a: jax.nn.elu(a) + 1.0, "relu": jax.nn.relu, "identity": lambda a: a}
        if self.feature_map not in fixed:
            raise ValueError(
                f"unknown feature_map {self.feature_map!r}; choose from {_FEATURE_MAPS}")
        return fixed[self.feature_map], fixed[self.feature_map]

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        dim = x_BxLxD.shape[-1]
        head_k, head_v = _split_dims(dim, self.num_heads, self.expand_k, self.expand_v)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        init = torch_linear_init()
        q_BxLxHxK = _heads_in((self.num_heads, head_k), init, name="q_proj", **kw)(x_BxLxD)
        k_BxLxHxK = _heads_in((self.num_heads, head_k), init, name="k_proj", **kw)(x_BxLxD)
        v_BxLxHxV = _heads_in((self.num_heads, head_v), init, name="v_proj", **kw)(x_BxLxD)
        fmap_q, fmap_k = self._feature_maps()
        q_BxLxHxK, k_BxLxHxK = fmap_q(q_BxLxHxK), fmap_k(k_BxLxHxK)

        q_BxHxLxK, k_BxHxLxK, v_BxHxLxV = (heads_first(a, jnp.float32)
                                           for a in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxV))
        o_BxHxLxV = ops.linear_attention(q_BxHxLxK, k_BxHxLxK, v_BxHxLxV,
                                         chunk_size=self.chunk_size, impl=self.kernel_impl)
        if self.normalize:
            z_BxHxLxK = jnp.cumsum(k_BxHxLxK, axis=2)
            denom_BxHxL = jnp.einsum("bhlk,bhlk->bhl", q_BxHxLxK, z_BxHxLxK) + self.eps
            o_BxHxLxV = o_BxHxLxV / denom_BxHxL[..., None]
        o_BxLxHxV = from_heads_first(o_BxHxLxV, self.dtype)
        return _heads_out(dim, init, name="out_proj", **kw)(o_BxLxHxV)

    def flops(self, dim: int, seq_len: int) -> int:
        """Forward FLOPs: Q/K/V/output projections; the learned feature maps (two K_h x K_h maps
        for each of q and k, 1 per product element); the recurrence as 2*L*H*K_h*V_h for the
        state update and again for the readout; the normaliser (cumsum, dot, divide)."""
        head_k, head_v = _split_dims(dim, self.num_heads, self.expand_k, self.expand_v)
        key_dim, value_dim = self.num_heads * head_k, self.num_heads * head_v
        total = (2 * accounting.dense_flops(seq_len, dim, key_dim)
                 + accounting.dense_flops(seq_len, dim, value_dim)
                 + accounting.dense_flops(seq_len, value_dim, dim))
        if self.feature_map == "elementwise_product":
            total += (4 * accounting.dense_flops(seq_len * self.num_heads, head_k, head_k)
                      + 2 * seq_len * key_dim)
        total += 4 * seq_len * self.num_heads * head_k * head_v
        if self.normalize:
            total += 3 * seq_len * key_dim + seq_len * value_dim
        return int(total)

    def state_size(self, dim: int, seq_len: int) -> int:
        """H * K_h * V_h (the state matrices) + H * K_h (the running key sum of the normaliser)."""
        head_k, head_v = _split_dims(dim, self.num_heads, self.expand_k, self.expand_v)
        normaliser = self.num_heads * head_k if self.normalize else 0
        return int(self.num_heads * head_k * head_v + normaliser)


class GatedLinearAttention(nn.Module):
    """GLA: linear attention with a data-dependent, low-rank, per-key-channel decay (see above).

    Attributes:
      num_heads: heads H.
      expand_k, expand_v: key / value widths as multiples of D.
      gate_low_rank_dim: rank of the decay-gate projection D -> r -> K.
      gate_logit_normalizer: log decay = log_sigmoid(logits) / gate_logit_normalizer.
      clamp_min: optional lower bound on the log decay (None: none, as in the MAD configs).
      norm_eps: epsilon of the per-head RMSNorm.
      chunk_size, kernel_impl: passed to `mad_jax.ops.linear_attention`.
    The log decay [B, L, H, K] is sown as ("intermediates", "log_decay") for inspection.
    """

    num_heads: int = 1
    expand_k: float = 1.0
    expand_v: float = 1.0
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16.0
    clamp_min: float | None = None
    norm_eps: float = 1e-5
    chunk_size: int = 64
    kernel_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        dim = x_BxLxD.shape[-1]
        head_k, head_v = _split_dims(dim, self.num_heads, self.expand_k, self.expand_v)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        # Xavier uniform with gain 2**-2.5, as the reference's reset_parameters (marked Linear:
        # the autoencoder backbone re-draws it, as the reference's does).
        init = linear_weight(nn.initializers.variance_scaling(2.0 ** -5, "fan_avg", "uniform"))
        q_BxLxHxK = _heads_in((self.num_heads, head_k), init, name="q_proj", **kw)(x_BxLxD)
        k_BxLxHxK = _heads_in((self.num_heads, head_k), init, name="k_proj", **kw)(x_BxLxD)
        v_BxLxHxV = _heads_in((self.num_heads, head_v), init, name="v_proj", **kw)(x_BxLxD)
        g_BxLxHxV = _heads_in((self.num_heads, head_v), init, name="g_proj", **kw)(x_BxLxD)

        gate_BxLxR = nn.Dense(
            self.gate_low_rank_dim, use_bias=False, name="gk_proj_down", **kw,
            kernel_init=nn.with_logical_partitioning(init, ("embed", None)))(x_BxLxD)
        gate_BxLxHxK = DenseGeneral(
            (self.num_heads, head_k), name="gk_proj_up", **kw,
            kernel_init=init, kernel_axes=(None, "heads", "kv"),
            bias_init=nn.initializers.zeros_init(),
        )(gate_BxLxR)
        log_decay_BxLxHxK = (jax.nn.log_sigmoid(gate_BxLxHxK.astype(jnp.float32))
                             / self.gate_logit_normalizer)
        if self.clamp_min is not None:
            log_decay_BxLxHxK = jnp.maximum(log_decay_BxLxHxK, self.clamp_min)
        self.sow("intermediates", "log_decay", log_decay_BxLxHxK)

        f32 = jnp.float32
        o_BxHxLxV = ops.linear_attention(
            heads_first(q_BxLxHxK, f32) * head_k ** -0.5, heads_first(k_BxLxHxK, f32),
            heads_first(v_BxLxHxV, f32), log_decay_BxHxLxK=heads_first(log_decay_BxLxHxK, f32),
            chunk_size=self.chunk_size, impl=self.kernel_impl)
        o_BxLxHxV = from_heads_first(o_BxHxLxV)

        # RMSNorm over each head's values (float32), one weight vector shared by the heads.
        norm_scale_V = self.param(
            "g_norm", nn.with_logical_partitioning(nn.initializers.ones_init(), ("kv",)),
            (head_v,), self.param_dtype).astype(jnp.float32)
        mean_sq_BxLxHx1 = jnp.mean(jnp.square(o_BxLxHxV), axis=-1, keepdims=True)
        o_BxLxHxV = o_BxLxHxV * jax.lax.rsqrt(mean_sq_BxLxHx1 + self.norm_eps) * norm_scale_V
        o_BxLxHxV = o_BxLxHxV.astype(self.dtype) * nn.swish(g_BxLxHxV)
        return _heads_out(dim, init, name="o_proj", **kw)(o_BxLxHxV)

    def flops(self, dim: int, seq_len: int) -> int:
        """Forward FLOPs: Q/K/V/G/output projections and the rank-r gate projection; 1 per element
        for the log-sigmoid gate, the state decay (L*H*K_h*V_h), the norm and the swish output
        gate (2 per element); the recurrence as 2*L*H*K_h*V_h for the state update and again for
        the readout."""
        head_k, head_v = _split_dims(dim, self.num_heads, self.expand_k, self.expand_v)
        key_dim, value_dim = self.num_heads * head_k, self.num_heads * head_v
        rank = self.gate_low_rank_dim
        projections = (2 * accounting.dense_flops(seq_len, dim, key_dim)
                       + 2 * accounting.dense_flops(seq_len, dim, value_dim)
                       + accounting.dense_flops(seq_len, value_dim, dim)
                       + accounting.dense_flops(seq_len, dim, rank)
                       + accounting.dense_flops(seq_len, rank, key_dim))
        state = seq_len * self.num_heads * head_k * head_v
        recurrence = 4 * state + state
        elementwise = seq_len * key_dim + seq_len * value_dim + 2 * seq_len * value_dim
        return int(projections + recurrence + elementwise)

    def state_size(self, dim: int, seq_len: int) -> int:
        """H * K_h * V_h: the decayed state matrices (nothing else is carried between steps)."""
        head_k, head_v = _split_dims(dim, self.num_heads, self.expand_k, self.expand_v)
        return int(self.num_heads * head_k * head_v)


register_layer("linear-attention", LinearAttention, {"num_heads": 1})
register_layer("mh-linear-attention", LinearAttention, {"num_heads": 16})
register_layer("gated-linear-attention", GatedLinearAttention,
               {"num_heads": 1, "gate_low_rank_dim": 16, "gate_logit_normalizer": 16.0})
register_layer("mh-gated-linear-attention", GatedLinearAttention,
               {"num_heads": 8, "gate_low_rank_dim": 16, "gate_logit_normalizer": 16.0})

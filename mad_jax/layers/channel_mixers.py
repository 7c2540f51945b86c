"""Position-wise channel mixers: the MLP and SwiGLU of the MAD reference (athms/mad-lab `mlp.py`).

Both act on each position independently (no state). Linear maps are bias-free and initialised like
PyTorch's `nn.Linear` (U(-1/sqrt(fan_in), 1/sqrt(fan_in))), as in the reference, whose backbone only
zeroes the biases.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mad_jax.layers.accounting import dense_flops
from mad_jax.layers.initializers import torch_dense
from mad_jax.layers.registry import register_layer


class MLP(nn.Module):
    """Two-layer perceptron y = W2 gelu(W1 x), GELU in its tanh approximation (as the reference).

    hidden_dim: inner width; None means 4 * D (512 at width 128), the reference's `dim_inner: null`.
    use_bias: the MAD config (`configs/layers/mlp.yml`) sets `bias: false`.
    """

    hidden_dim: int | None = None
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def inner_dim(self, dim: int) -> int:
        return 4 * dim if self.hidden_dim is None else self.hidden_dim

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        dim = x_BxLxD.shape[-1]
        x_BxLxD = x_BxLxD.astype(self.dtype)
        h_BxLxF = torch_dense(self, self.inner_dim(dim), ("embed", "mlp"), "fc", self.use_bias)(x_BxLxD)
        h_BxLxF = jax.nn.gelu(h_BxLxF, approximate=True)
        return torch_dense(self, dim, ("mlp", "embed"), "proj", self.use_bias)(h_BxLxF)

    def flops(self, dim: int, seq_len: int) -> int:
        """Two dense maps 2*L*D*F each, GELU at 1 FLOP per hidden element, bias adds if any."""
        inner = self.inner_dim(dim)
        bias = seq_len * (inner + dim) if self.use_bias else 0
        return int(dense_flops(seq_len, dim, inner) + dense_flops(seq_len, inner, dim)
                   + seq_len * inner + bias)

    def state_size(self, dim: int, seq_len: int) -> int:
        """0: position-wise, nothing is kept between tokens."""
        return 0


class SwiGLU(nn.Module):
    """Gated channel mixer y = W3 (silu(W1 x) * W2 x), bias-free (the reference's `SwiGLU`).

    hidden_dim: inner width; None means the reference's rounding: int(8 * D / 3) rounded *up* to a
    multiple of `multiple_of` (16), i.e. 341 -> 352 at width 128.
    """

    hidden_dim: int | None = None
    multiple_of: int = 16
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def inner_dim(self, dim: int) -> int:
        if self.hidden_dim is not None:
            return self.hidden_dim
        inner = 8 * dim // 3
        return self.multiple_of * (-(-inner // self.multiple_of))

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        dim = x_BxLxD.shape[-1]
        inner = self.inner_dim(dim)
        x_BxLxD = x_BxLxD.astype(self.dtype)
        gate_BxLxF = jax.nn.silu(torch_dense(self, inner, ("embed", "mlp"), "w1")(x_BxLxD))
        up_BxLxF = torch_dense(self, inner, ("embed", "mlp"), "w2")(x_BxLxD)
        return torch_dense(self, dim, ("mlp", "embed"), "w3")(gate_BxLxF * up_BxLxF)

    def flops(self, dim: int, seq_len: int) -> int:
        """Three dense maps (2*L*D*F each); SiLU and the gating product, 1 per hidden element."""
        inner = self.inner_dim(dim)
        return int(2 * dense_flops(seq_len, dim, inner) + dense_flops(seq_len, inner, dim)
                   + 2 * seq_len * inner)

    def state_size(self, dim: int, seq_len: int) -> int:
        """0: position-wise, nothing is kept between tokens."""
        return 0


register_layer("mlp", MLP, {})
register_layer("swiglu", SwiGLU, {})

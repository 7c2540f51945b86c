"""`DenseGeneral`: flax's nn.DenseGeneral for kernels with more than two logical axes.

flax 0.12's nn.DenseGeneral initialises a boxed kernel at its flat 2-D shape and unboxes it before
reshaping; with a mesh in context the unbox applies the 3-D logical constraint to the 2-D array and
fails (google/flax#3676), at init and at apply (flax re-runs the init abstractly to check shapes).
This module computes the same thing with the same parameter names, shapes and initial values (the
initializer still sees the flat [fan_in, fan_out] shape), but boxes the kernel at its full shape.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


class DenseGeneral(nn.Module):
    """y = x . kernel (+ bias) over `axis`; kernel [*in, *features] named by `kernel_axes`."""

    features: int | Sequence[int]
    kernel_axes: Sequence[str | None]
    axis: int | Sequence[int] = -1
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = tuple(self.features) if isinstance(self.features, Sequence) else (self.features,)
        axis = tuple(self.axis) if isinstance(self.axis, Sequence) else (self.axis,)
        axis = tuple(a % x.ndim for a in axis)
        in_shape = tuple(x.shape[a] for a in axis)
        flat = (math.prod(in_shape), math.prod(features))

        def kernel_init(rng, shape, dtype):
            return jnp.reshape(self.kernel_init(rng, flat, dtype), shape)

        kernel = self.param("kernel",
                            nn.with_logical_partitioning(kernel_init, tuple(self.kernel_axes)),
                            in_shape + features, self.param_dtype)
        bias = None
        if self.use_bias:
            def bias_init(rng, shape, dtype):
                return jnp.reshape(self.bias_init(rng, (flat[1],), dtype), shape)
            bias = self.param("bias", nn.with_logical_partitioning(
                bias_init, tuple(self.kernel_axes)[len(in_shape):]), features, self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = lax.dot_general(x, kernel, ((axis, tuple(range(len(axis)))), ((), ())))
        return y if bias is None else y + bias

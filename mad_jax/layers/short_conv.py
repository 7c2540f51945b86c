"""Causal depthwise short convolution: the explicit short filter of Hyena and Mamba.

Both reference layers (athms/mad-lab `hyena.py`, `mamba.py`) apply a PyTorch
`nn.Conv1d(C, C, kernel_size=K, groups=C, padding=K-1)` and keep the first L outputs, i.e.

    y[b, t, c] = bias[c] + sum_{j=0}^{K-1} w[j, c] * x[b, t - (K-1) + j, c],   x[b, s<0, c] = 0,

so tap w[K-1] sees the current token and w[0] the token K-1 steps back. To generate the next
token the layer keeps the last K-1 inputs of every channel: a state of (K-1) * C numbers.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def causal_depthwise_conv(x_BxLxC: jnp.ndarray, w_KxC: jnp.ndarray,
                          b_C: jnp.ndarray | None = None) -> jnp.ndarray:
    """The convolution above in float32, as a sum of K shifted copies (K is small).

    x: [B, L, C]; w: [K, C]; b: [C] or None. Returns [B, L, C] in x.dtype.
    """
    kernel_size = w_KxC.shape[0]
    seq_len = x_BxLxC.shape[1]
    x_f32 = x_BxLxC.astype(jnp.float32)
    w_f32 = w_KxC.astype(jnp.float32)
    xpad_BxPxC = jnp.pad(x_f32, ((0, 0), (kernel_size - 1, 0), (0, 0)))
    y_BxLxC = sum(xpad_BxPxC[:, j:j + seq_len] * w_f32[j] for j in range(kernel_size))
    if b_C is not None:
        y_BxLxC = y_BxLxC + b_C.astype(jnp.float32)
    return y_BxLxC.astype(x_BxLxC.dtype)


def _torch_conv_uniform(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default Conv1d init for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class ShortConv(nn.Module):
    """Causal depthwise convolution of length `kernel_size` over the last (channel) axis.

    Parameters: `kernel` [K, C] and, if `use_bias`, `bias` [C], both initialised like PyTorch's
    depthwise Conv1d (fan_in = K), as the reference layers are. `__call__(x_BxLxC) -> y_BxLxC`.
    """

    kernel_size: int = 3
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxC: jnp.ndarray) -> jnp.ndarray:
        channels = x_BxLxC.shape[-1]
        init = _torch_conv_uniform(self.kernel_size)
        w_KxC = self.param("kernel", nn.with_logical_partitioning(init, (None, "mlp")),
                           (self.kernel_size, channels), self.param_dtype)
        b_C = None
        if self.use_bias:
            b_C = self.param("bias", nn.with_logical_partitioning(init, ("mlp",)), (channels,),
                             self.param_dtype)
        return causal_depthwise_conv(x_BxLxC.astype(self.dtype), w_KxC, b_C)


def short_conv_params(kernel_size: int, channels: int, use_bias: bool = True) -> int:
    """Parameter count: K * C weights plus C biases."""
    return kernel_size * channels + (channels if use_bias else 0)


def short_conv_flops(kernel_size: int, seq_len: int, channels: int) -> int:
    """Forward FLOPs: K multiply-adds per output element (2 * K * L * C)."""
    return 2 * kernel_size * seq_len * channels


def short_conv_state(kernel_size: int, channels: int) -> int:
    """Numbers kept to produce the next output: the last K - 1 inputs per channel."""
    return (kernel_size - 1) * channels

"""The implicit long filter of Hyena (Poli et al. 2023, section 3.3), after athms/mad-lab
`featurization/hyena_filter.py` (`HyenaFilter`, non-nested, `depth_implicit=2`):

    h[t, c] = FFN(z_t)[c] * (exp(-t_norm * |delta_c|) + shift)

  * z_t: a trainable positional embedding z [max_length, emb_dim], emb_dim = 1 + 2 * bands (odd,
    >= 3), initialised as the reference's `PositionalEmbedding` to
    [t_norm, cos(f_b w_t), -sin(f_b w_t)] (the real and imaginary parts of exp(-i f_b w_t)) with
    t_norm = t / (n - 1), w_t = 2 pi t / n, frequencies f = linspace(1e-4, bands - 1, bands) and
    n = max_length; a call of length L <= max_length uses its first L rows. max_length is the
    model's (the backbone passes it); a standalone layer without one takes the length it is
    initialised with.
  * FFN: Linear(emb_dim, W) -> Sin -> [Linear(W, W) -> Sin] * num_inner -> Linear(W, C, no bias),
    where Sin(x) = sin(freq * x) with one trainable freq vector [W] (init `sin_freq`) shared by
    every Sin of the FFN (the reference reuses one `Sin` module). W is the reference's filter
    `order`.
  * modulation: per-channel decay rates |delta_c| spaced linearly from log(target)/slow_decay_pct
    to log(target)/fast_decay_pct (a fixed buffer in the reference, so not a parameter here),
    so every channel has decayed to at most `target` (1e-2) at t_norm = slow_decay_pct (1.5) and
    the fastest one by t_norm = fast_decay_pct (0.3). t_norm is a fixed buffer in the reference.

As in the reference's MAD configs: no window, no post-modulation norm, shift 0; the FFN biases
start at zero (the backbone zeroes Linear biases). The reference tags z with a learning rate of
1e-5 and the FFN with 1e-3, but its trainer builds one AdamW over all parameters, so every
parameter trains at the run's rate, as here. Computed in float32.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mad_jax.layers.initializers import torch_dense


def positional_features(length: int, emb_dim: int) -> jnp.ndarray:
    """The reference's complex-exponential features z [length, emb_dim] (float32) at horizon
    n = length: the initial value of the positional embedding."""
    if emb_dim < 3 or emb_dim % 2 == 0:
        raise ValueError(f"filter emb_dim must be odd and >= 3 (time, cos, sin), got {emb_dim}")
    pos_L = jnp.arange(length, dtype=jnp.float32)
    t_Lx1 = (pos_L / max(length - 1, 1))[:, None]
    w_Lx1 = (2.0 * math.pi * pos_L / length)[:, None]
    bands = (emb_dim - 1) // 2
    f_F = jnp.linspace(1e-4, bands - 1, bands, dtype=jnp.float32)
    phase_LxF = f_F[None, :] * w_Lx1
    return jnp.concatenate([t_Lx1, jnp.cos(phase_LxF), -jnp.sin(phase_LxF)], axis=-1)


def decay_rates(channels: int, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                target: float = 1e-2) -> jnp.ndarray:
    """The per-channel decay rates |delta_c| [C] of the exponential modulation (float32)."""
    max_decay = math.log(target) / fast_decay_pct
    min_decay = math.log(target) / slow_decay_pct
    return jnp.abs(jnp.linspace(min_decay, max_decay, channels, dtype=jnp.float32))


def positional_embedding_init(key: jax.Array, shape: tuple[int, ...],
                              dtype: Any = jnp.float32) -> jax.Array:
    """Init of z [max_length, emb_dim]: the positional features at horizon max_length."""
    del key  # deterministic, as the reference's
    return positional_features(shape[0], shape[1]).astype(dtype)


class ImplicitFilter(nn.Module):
    """Hyena's implicit long filter: `__call__(seq_len) -> h [seq_len, channels]` (float32).

    channels: number of filter channels C (one long filter per channel).
    max_length: rows of the trainable positional embedding z and the horizon positions are
      normalised by; None: the length the filter is initialised with. Longer calls are errors.
    ffn_width: hidden width W of the FFN (the reference's filter `order`).
    emb_dim: positional feature size (odd, >= 3; the reference's default 3).
    num_inner: number of hidden W x W layers (the reference's `depth_implicit`, 2).
    sin_freq: initial frequency of the Sin activations (the reference's `w`, 1).
    """

    channels: int
    max_length: int | None = None
    ffn_width: int = 16
    emb_dim: int = 3
    num_inner: int = 2
    sin_freq: float = 1.0
    modulate: bool = True
    fast_decay_pct: float = 0.3
    slow_decay_pct: float = 1.5
    target: float = 1e-2
    shift: float = 0.0
    param_dtype: Any = jnp.float32

    def horizon(self, seq_len: int) -> int:
        """Rows of z: max_length, else those of an existing z, else (at init) seq_len."""
        if self.max_length is not None:
            return self.max_length
        if self.has_variable("params", "z"):
            return nn.unbox(self.get_variable("params", "z")).shape[0]
        return seq_len

    @nn.compact
    def __call__(self, seq_len: int) -> jnp.ndarray:
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ValueError(f"filter emb_dim must be odd and >= 3 (time, cos, sin), "
                             f"got {self.emb_dim}")
        horizon = self.horizon(seq_len)
        z_NxE = self.param("z", nn.with_logical_partitioning(positional_embedding_init,
                                                             (None, None)),
                           (horizon, self.emb_dim), self.param_dtype).astype(jnp.float32)
        if seq_len > horizon:
            raise ValueError(f"input length {seq_len} exceeds the Hyena filter's max_length "
                             f"{horizon}; build the layer with max_length >= {seq_len}")
        z_LxE = z_NxE[:seq_len]
        t_Lx1 = (jnp.arange(seq_len, dtype=jnp.float32) / max(horizon - 1, 1))[:, None]
        freq_W = self.param(
            "sin_freq", nn.with_logical_partitioning(nn.initializers.constant(self.sin_freq),
                                                     (None,)),
            (self.ffn_width,), self.param_dtype).astype(jnp.float32)

        def dense(features, use_bias, axes, name):  # the filter runs in float32
            return torch_dense(self, features, axes, name, use_bias, dtype=jnp.float32)

        h_LxW = jnp.sin(freq_W * dense(self.ffn_width, True, (None, None), "in")(z_LxE))
        for i in range(self.num_inner):
            hidden = dense(self.ffn_width, True, (None, None), f"hidden_{i}")
            h_LxW = jnp.sin(freq_W * hidden(h_LxW))
        h_LxC = dense(self.channels, False, (None, "mlp"), "out")(h_LxW)
        if self.modulate:
            rates_C = decay_rates(self.channels, self.fast_decay_pct, self.slow_decay_pct,
                                  self.target)
            h_LxC = h_LxC * (jnp.exp(-t_Lx1 * rates_C) + self.shift)
        return h_LxC


def implicit_filter_params(channels: int, ffn_width: int, max_length: int, emb_dim: int = 3,
                           num_inner: int = 2) -> int:
    """Parameter count of ImplicitFilter: positional embedding max_length E, shared sin freq W,
    input layer (E+1) W, inner layers num_inner * (W+1) W, bias-free output layer W C."""
    return (max_length * emb_dim + ffn_width + (emb_dim + 1) * ffn_width
            + num_inner * (ffn_width + 1) * ffn_width
            + ffn_width * channels)


def implicit_filter_flops(seq_len: int, channels: int, ffn_width: int, emb_dim: int = 3,
                          num_inner: int = 2, modulate: bool = True) -> int:
    """Forward FLOPs of generating the filter for L positions: the FFN's dense maps
    (2 L E W + num_inner 2 L W W + 2 L W C), its Sin activations (2 L W each: scale and sine) and
    the modulation (2 L C: decay and product). Slicing the positional embedding costs nothing."""
    dense = 2 * seq_len * (emb_dim * ffn_width + num_inner * ffn_width * ffn_width
                           + ffn_width * channels)
    sines = 2 * seq_len * ffn_width * (1 + num_inner)
    modulation = 2 * seq_len * channels if modulate else 0
    return int(dense + sines + modulation)

"""Rotary position embeddings (RoFormer, Su et al. 2021), in the GPT-NeoX / flash-attn layout.

The rotated part of each head, its first `rotary_dim` channels, is split into two halves
(x1, x2) that form the real and imaginary parts of rotary_dim / 2 complex numbers; channel pair i
turns by angle `t * base**(-2i / rotary_dim)` at position t:
    x1' = x1 cos - x2 sin,   x2' = x2 cos + x1 sin.
This is flash-attn's `RotaryEmbedding(interleaved=False)`, which the PyTorch MAD reference uses.
The remaining `head_dim - rotary_dim` channels pass through unchanged. Because q_t . k_s after the
rotation depends on t and s only through t - s, attention scores are relative.
"""
from __future__ import annotations

import jax.numpy as jnp


def rotary_cos_sin(positions_L: jnp.ndarray, rotary_dim: int, base: float = 10000.0):
    """cos, sin of the rotation angles, each [L, rotary_dim // 2] in float32."""
    if rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even, got {rotary_dim}")
    inv_freq_R2 = 1.0 / (base ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    angles_LxR2 = positions_L.astype(jnp.float32)[:, None] * inv_freq_R2[None, :]
    return jnp.cos(angles_LxR2), jnp.sin(angles_LxR2)


def apply_rotary(x_BxLxHxDh: jnp.ndarray, rotary_dim: int, *, base: float = 10000.0,
                 positions_L: jnp.ndarray | None = None) -> jnp.ndarray:
    """Rotates the first `rotary_dim` channels of every head by its position; returns x's dtype.

    x: [B, L, H, Dh] queries or keys; positions: [L] (default 0..L-1). The rotation is computed
    in float32. rotary_dim 0 returns x unchanged.
    """
    head_dim = x_BxLxHxDh.shape[-1]
    if rotary_dim == 0:
        return x_BxLxHxDh
    if not 0 < rotary_dim <= head_dim:
        raise ValueError(f"rotary_dim must lie in [0, head_dim={head_dim}], got {rotary_dim}")
    if positions_L is None:
        positions_L = jnp.arange(x_BxLxHxDh.shape[1])
    cos_LxR2, sin_LxR2 = rotary_cos_sin(positions_L, rotary_dim, base)
    cos_1xLx1xR2, sin_1xLx1xR2 = cos_LxR2[None, :, None, :], sin_LxR2[None, :, None, :]
    x = x_BxLxHxDh.astype(jnp.float32)
    half = rotary_dim // 2
    x1, x2, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
    rotated = [x1 * cos_1xLx1xR2 - x2 * sin_1xLx1xR2, x2 * cos_1xLx1xR2 + x1 * sin_1xLx1xR2, rest]
    return jnp.concatenate(rotated, axis=-1).astype(x_BxLxHxDh.dtype)

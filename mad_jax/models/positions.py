"""Fixed sinusoidal position features."""
from __future__ import annotations

import math

import jax.numpy as jnp


def sincos_positions(length: int, dim: int) -> jnp.ndarray:
    """Sinusoidal position embeddings [length, dim]: sines then cosines of geometric frequencies.

    Frequencies are 10000^(-i/(dim/2 - 1)) for i < dim/2; an odd dim gets a zero last column.
    """
    half = dim // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    freqs_H = jnp.exp(-scale * jnp.arange(half, dtype=jnp.float32))
    angles_LxH = jnp.arange(length, dtype=jnp.float32)[:, None] * freqs_H[None, :]
    emb_LxD = jnp.concatenate([jnp.sin(angles_LxH), jnp.cos(angles_LxH)], axis=1)
    if dim % 2:
        emb_LxD = jnp.pad(emb_LxD, ((0, 0), (0, 1)))
    return emb_LxD

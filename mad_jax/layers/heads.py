"""The head layout of the ops: layers project to [B, L, H, ...]; `mad_jax.ops` scans take and
return [B, H, L, ...] (the time axis next to the features, each head a separate sequence)."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def heads_first(a_BxLxH: jnp.ndarray, dtype: Any = None) -> jnp.ndarray:
    """[B, L, H, ...] -> [B, H, L, ...], cast to `dtype` when given (the scans run in float32)."""
    a_BxHxL = jnp.swapaxes(a_BxLxH, 1, 2)
    return a_BxHxL if dtype is None else a_BxHxL.astype(dtype)


def from_heads_first(a_BxHxL: jnp.ndarray, dtype: Any = None) -> jnp.ndarray:
    """[B, H, L, ...] -> [B, L, H, ...], the inverse of `heads_first` (for an op's output)."""
    return heads_first(a_BxHxL, dtype)

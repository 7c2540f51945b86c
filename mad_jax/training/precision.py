"""Training precision: float32, or bfloat16 compute over float32 parameters (the reference's
Lightning `precision="bf16"`: autocast, float32 weights and optimizer state).

For `"bfloat16"` a model with a flax-style `dtype` field (every mad_jax backbone and layer) is
cloned with `dtype=bfloat16`: its matmuls and activations run in bf16 while the layers keep
softmax, norm statistics, scans, FFTs and the logits in float32. A model without a `dtype` field
(a user's own module) gets a bf16 copy of its floating parameters for each forward pass instead.
Gradients, parameters and AdamW moments stay float32 either way.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PRECISIONS = ("float32", "bfloat16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return precision


def compute_model(model: nn.Module, precision: str) -> tuple[nn.Module, Any]:
    """(model to run, dtype to cast parameters to before each forward pass, or None)."""
    if check_precision(precision) == "float32":
        return model, None
    fields = {f.name for f in dataclasses.fields(model)} if dataclasses.is_dataclass(model) else ()
    if "dtype" in fields:
        return model.clone(dtype=jnp.bfloat16), None
    return model, jnp.bfloat16


def cast_params(params, dtype):
    """`params` with floating leaves cast to `dtype` (None: unchanged)."""
    if dtype is None:
        return params
    return jax.tree_util.tree_map(
        lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)

"""Initialisers and dense maps shared by the layers.

The MAD reference is PyTorch: its linear maps start from `nn.Linear`'s default,
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with biases zeroed by the language-model backbone. Its
autoencoder backbone instead re-initialises every `nn.Linear` of the whole model, the layers'
included, to N(0, 0.02) weights and zero biases. Layers mark the initialisers of their
Linear-equivalent parameters with `linear_weight` / `linear_bias` (`torch_linear_init` is
already marked), and a backbone swaps them for its own inside `linear_init_override`.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = nn.initializers.Initializer

# (weight init, bias init) that replace every marked initialiser while set; None: no override.
_LINEAR_OVERRIDE: contextvars.ContextVar[tuple[Initializer, Initializer] | None] = (
    contextvars.ContextVar("linear_init_override", default=None))


@contextlib.contextmanager
def linear_init_override(weight_init: Initializer, bias_init: Initializer) -> Iterator[None]:
    """Within this block, parameters created by `linear_weight(...)` / `linear_bias(...)`
    initialisers start from `weight_init` / `bias_init` instead (used by the autoencoder
    backbone around its `__call__`, so it applies during `init`)."""
    token = _LINEAR_OVERRIDE.set((weight_init, bias_init))
    try:
        yield
    finally:
        _LINEAR_OVERRIDE.reset(token)


def _marked(default: Initializer, slot: int) -> Initializer:
    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        override = _LINEAR_OVERRIDE.get()
        return (default if override is None else override[slot])(key, shape, dtype)

    return init


def linear_weight(default: Initializer) -> Initializer:
    """Marks `default` as the init of a weight that is an `nn.Linear` weight in the reference
    (any layout): a backbone may replace it (see `linear_init_override`)."""
    return _marked(default, 0)


def linear_bias(default: Initializer) -> Initializer:
    """Marks `default` as the init of an `nn.Linear` bias in the reference; see `linear_weight`."""
    return _marked(default, 1)


def torch_linear_init(in_axis: int | Sequence[int] = -2, out_axis: int | Sequence[int] = -1,
                      batch_axis: Sequence[int] = ()) -> Initializer:
    """PyTorch's default `nn.Linear` weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), any layout,
    marked with `linear_weight`.

    `in_axis` / `out_axis` name the contracted / produced axes of the kernel; `batch_axis` names
    axes that index independent matrices (e.g. experts), which do not count towards fan_in.
    """
    return linear_weight(nn.initializers.variance_scaling(
        1.0 / 3.0, "fan_in", "uniform", in_axis=in_axis, out_axis=out_axis,
        batch_axis=batch_axis))


def torch_dense(module: nn.Module, features: int, axes: tuple[str | None, str | None], name: str,
                use_bias: bool = False, dtype: Any = None) -> nn.Dense:
    """A bias-free (by default) Dense with the PyTorch init, a zero bias (the reference's backbone
    zeroes every Linear bias) and logical axis names (in, out).

    Takes `param_dtype` from `module`, the layer it is created in, and its `dtype` unless `dtype`
    names another compute dtype.
    """
    return nn.Dense(features, use_bias=use_bias, dtype=module.dtype if dtype is None else dtype,
                    param_dtype=module.param_dtype,
                    kernel_init=nn.with_logical_partitioning(torch_linear_init(), axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
                    name=name)

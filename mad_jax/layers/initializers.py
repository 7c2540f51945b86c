"""Initialisers and dense maps shared by the layers.

The MAD reference is PyTorch: its linear maps start from `nn.Linear`'s default,
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with biases zeroed by the backbone.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn


def torch_linear_init(in_axis: int | Sequence[int] = -2, out_axis: int | Sequence[int] = -1,
                      batch_axis: Sequence[int] = ()) -> nn.initializers.Initializer:
    """PyTorch's default `nn.Linear` weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), any layout.

    `in_axis` / `out_axis` name the contracted / produced axes of the kernel; `batch_axis` names
    axes that index independent matrices (e.g. experts), which do not count towards fan_in.
    """
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=in_axis,
                                            out_axis=out_axis, batch_axis=batch_axis)


def torch_dense(module: nn.Module, features: int, axes: tuple[str, str], name: str,
                use_bias: bool = False) -> nn.Dense:
    """A bias-free (by default) Dense with the PyTorch init and logical axis names (in, out).

    Takes `dtype` and `param_dtype` from `module`, the layer it is created in.
    """
    return nn.Dense(features, use_bias=use_bias, dtype=module.dtype, param_dtype=module.param_dtype,
                    kernel_init=nn.with_logical_partitioning(torch_linear_init(), axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
                    name=name)

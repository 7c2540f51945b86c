"""The pre-norm residual block shared by both backbones, and the norm factory."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

NORMS = ("layernorm", "rmsnorm")


def make_norm(norm: str, *, dtype: Any, param_dtype: Any, name: str | None = None) -> nn.Module:
    """LayerNorm (default, as the reference's model config) or RMSNorm; statistics in float32.

    Both with the reference's epsilon 1e-5 (torch.nn.LayerNorm's and its RMSNorm's default).
    """
    scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
    if norm == "layernorm":
        bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ("embed",))
        return nn.LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init,
                            bias_init=bias_init, use_fast_variance=False, name=name)
    if norm == "rmsnorm":
        return nn.RMSNorm(epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init,
                          name=name)
    raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")


class Block(nn.Module):
    """x + layer(norm(x)) for one layer, resolved when the model was built.

    Attributes:
      layer: the layer's registered name (for messages and parameter-free descriptions).
      module: the layer's module class, as the registry held it when the model was built
        (`registry.resolve_layers`): tracing never looks a name up.
      defaults: (key, value) pairs of the layer's registered default config.
      overrides: (key, value) pairs that update the default config.
      norm: "layernorm" or "rmsnorm".
      max_length: the model's longest input; given, like dtype and param_dtype, to a layer that
        has a field of that name (the Hyena filters size their positional embedding by it, as
        the reference's layers are built with the model's max_length), unless overridden.
    """

    layer: str
    module: Any
    defaults: tuple[tuple[str, Any], ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()
    norm: str = "layernorm"
    max_length: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        config = {**dict(self.defaults), **dict(self.overrides)}
        fields = getattr(self.module, "__dataclass_fields__", {})
        for key in ("dtype", "param_dtype", "max_length"):
            if key in fields and key not in dict(self.overrides):
                config[key] = getattr(self, key)
        mixer = self.module(**config, name="mixer")
        h_BxLxD = make_norm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x_BxLxD)
        y_BxLxD = mixer(h_BxLxD)
        x_BxLxD = x_BxLxD + y_BxLxD.astype(x_BxLxD.dtype)
        return nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed"))

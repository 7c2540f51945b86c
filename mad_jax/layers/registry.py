"""The layer registry: layer name -> (Flax module class, default config).

Every sequence mixer and channel mixer of mad_jax is registered here under the name used in
hybrid strings ("hyena swiglu mh-attention swiglu"). Users add their own layers with
`register_layer` without editing mad_jax.

A layer module follows one contract:
  * `__call__(self, x_BxLxD) -> y_BxLxD`: the input is already normalised by the backbone,
    which also adds the residual. Sequence mixers are causal.
  * the model width D is read from the input; the module's fields are its config.
  * auxiliary losses (e.g. MoE load balancing) are reported with
    `self.sow("losses", "aux_loss", scalar)`; the trainer adds every sown loss to the objective.
  * optional accounting methods, callable on an unbound instance:
    `flops(dim, seq_len) -> int` (forward FLOPs per sequence) and
    `state_size(dim, seq_len) -> int` (numbers kept to generate the next token).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn


class LayerSpec(NamedTuple):
    """A registered layer: its module class and the default keyword config it is built with."""

    module: type[nn.Module]
    config: Mapping[str, Any]


LAYERS: dict[str, LayerSpec] = {}
# One resolved layer of a model: (name, module class, its registered default config as sorted
# (key, value) pairs); a model's overrides apply on top.
ResolvedLayer = tuple[str, type, tuple[tuple[str, Any], ...]]


def register_layer(name: str, module: type[nn.Module], config: Mapping[str, Any] | None = None,
                   *, overwrite: bool = False) -> type[nn.Module]:
    """Registers `module` under `name` with default `config` (keyword arguments of the module).

    Returns the module class, so it can be used as a plain call after a class definition.
    Raises ValueError if the name is taken (pass overwrite=True to replace it) or malformed.
    """
    if not isinstance(name, str) or not name or any(c.isspace() for c in name) or name in "()":
        raise ValueError(f"layer name must be a non-empty string without spaces, got {name!r}")
    if not (isinstance(module, type) and issubclass(module, nn.Module)):
        raise TypeError(f"layer {name!r}: module must be a flax.linen.Module subclass, got {module!r}")
    if name in LAYERS and not overwrite:
        raise ValueError(f"layer {name!r} is already registered; pass overwrite=True to replace it")
    config = dict(config or {})
    fields = getattr(module, "__dataclass_fields__", {})
    unknown = sorted(k for k in config if k not in fields)
    if unknown:
        raise ValueError(f"layer {name!r}: config keys {unknown} are not fields of {module.__name__}")
    # Models built before a replacement keep the class they resolved (`resolve_layers`), so no
    # compiled program has to be invalidated here.
    LAYERS[name] = LayerSpec(module, config)
    return module


def get_layer_spec(name: str) -> LayerSpec:
    """Returns the LayerSpec for `name`; ValueError listing the valid names if unknown."""
    try:
        return LAYERS[name]
    except KeyError:
        raise ValueError(
            f"unknown layer {name!r}; valid layers: {', '.join(sorted(LAYERS))} "
            "(or register your own with mad_jax.layers.register_layer)") from None


def make_layer(name: str, **overrides: Any) -> nn.Module:
    """Builds an (unbound) layer module from its registered defaults updated by `overrides`."""
    spec = get_layer_spec(name)
    fields = getattr(spec.module, "__dataclass_fields__", {})
    unknown = sorted(k for k in overrides if k not in fields or k in ("parent", "name"))
    if unknown:
        raise ValueError(f"layer {name!r}: unknown config keys {unknown}; "
                         f"valid keys: {sorted(k for k in fields if k not in ('parent', 'name'))}")
    return spec.module(**{**spec.config, **overrides})


def resolve_layers(names: Sequence[str],
                   resolved: Sequence[ResolvedLayer] = ()) -> tuple[ResolvedLayer, ...]:
    """Each layer name as the registry holds it now: (name, module class, default config).

    resolved: entries resolved before (a clone of a built model); kept when their names still
      match, so a built model's layers never change when the registry does.
    """
    if tuple(entry[0] for entry in resolved) == tuple(names):
        return tuple(resolved)
    specs = [(name, get_layer_spec(name)) for name in names]
    return tuple((name, spec.module, tuple(sorted(spec.config.items()))) for name, spec in specs)


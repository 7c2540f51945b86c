"""`build`: a registered-layer hybrid and a backbone name -> a flax.linen Module."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax.numpy as jnp

from mad_jax.layers import registry
from mad_jax.models.autoencoder import AutoEncoder
from mad_jax.models.blocks import NORMS
from mad_jax.models.hybrid import parse_layers
from mad_jax.models.language_model import LanguageModel

BACKBONES = {"language-model": LanguageModel, "autoencoder": AutoEncoder}


def freeze_layer_configs(layers: Sequence[str],
                         layer_configs: Mapping[str, Mapping[str, Any]] | None):
    """Validates per-layer-name config overrides and returns them as hashable nested tuples."""
    layer_configs = dict(layer_configs or {})
    frozen = []
    for name, overrides in sorted(layer_configs.items()):
        if name not in layers:
            raise ValueError(f"layer_configs names {name!r}, which is not in the model's layers {list(layers)}")
        registry.make_layer(name, **dict(overrides))  # validates the keys
        frozen.append((name, tuple(sorted(dict(overrides).items()))))
    return tuple(frozen)


def build(layers: str | Sequence[str], *, vocab_size: int, max_length: int, dim: int = 128,
          backbone: str = "language-model", norm: str = "layernorm",
          layer_configs: Mapping[str, Mapping[str, Any]] | None = None,
          position_embedding: str = "none", dtype: Any = jnp.float32,
          param_dtype: Any = jnp.float32):
    """Builds a striped-hybrid model.

    Args:
      layers: layer names (`["hyena", "swiglu"]`) or the compact string ("(hyena swiglu)x2").
      vocab_size: number of token ids V.
      max_length: longest input length L the model will see.
      dim: model width D (the MAD default is 128).
      backbone: "language-model" (logits for every position) or "autoencoder" (compression).
      norm: "layernorm" (default) or "rmsnorm".
      layer_configs: per layer name, overrides of its default config (e.g. {"mh-attention": {"num_heads": 8}}).
      position_embedding: "none" (default) or "sincos".
      dtype, param_dtype: compute and parameter dtypes.

    Returns:
      A flax.linen Module: `model.apply({"params": p}, tokens_BxL) -> logits_BxLxV` (float32).
    """
    names = parse_layers(layers)
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(BACKBONES)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    for key, value, low in (("vocab_size", vocab_size, 2), ("max_length", max_length, 1), ("dim", dim, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
    return BACKBONES[backbone](
        layers=names, vocab_size=vocab_size, max_length=max_length, dim=dim, norm=norm,
        layer_overrides=freeze_layer_configs(names, layer_configs),
        position_embedding=position_embedding, dtype=dtype, param_dtype=param_dtype)

"""The `language-model` backbone: embed -> pre-norm residual blocks -> final norm -> unembed."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mad_jax.layers.initializers import torch_linear_init
from mad_jax.layers.registry import ResolvedLayer, resolve_layers
from mad_jax.models.blocks import Block, make_norm
from mad_jax.models.positions import sincos_positions

EMBED_INIT_STD = 0.02


class Embed(nn.Module):
    """Token embedding with optional sinusoidal positions: int [B, L] -> [B, L, D]."""

    vocab_size: int
    dim: int
    max_length: int
    position_embedding: str = "none"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens_BxL: jnp.ndarray) -> jnp.ndarray:
        init = nn.with_logical_partitioning(nn.initializers.normal(EMBED_INIT_STD), ("vocab", "embed"))
        x_BxLxD = nn.Embed(self.vocab_size, self.dim, embedding_init=init, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="tokens")(tokens_BxL)
        # The residual stream stays float32 under bf16 compute, as under the reference's
        # autocast: blocks add their bf16 outputs into it, so small updates are not rounded away.
        x_BxLxD = x_BxLxD.astype(jnp.promote_types(self.dtype, jnp.float32))
        if self.position_embedding == "sincos":
            x_BxLxD = x_BxLxD + sincos_positions(tokens_BxL.shape[1], self.dim).astype(x_BxLxD.dtype)
        elif self.position_embedding != "none":
            raise ValueError(f"unknown position_embedding {self.position_embedding!r}; valid: none, sincos")
        return nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed"))


class Unembed(nn.Module):
    """Final norm and linear map to vocabulary logits (float32): [B, L, D] -> [B, L, V].

    The map starts as the reference's `nn.Linear`: weight U(+-1/sqrt(D)), bias zero (the backbone
    zeroes Linear biases); the autoencoder re-draws the weight (see `autoencoder`).
    """

    vocab_size: int
    norm: str = "layernorm"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        h_BxLxD = make_norm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x_BxLxD)
        logits_BxLxV = nn.Dense(
            self.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype, name="proj",
            kernel_init=nn.with_logical_partitioning(torch_linear_init(), ("embed", "vocab")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)))(h_BxLxD)
        return logits_BxLxV.astype(jnp.float32)


class Encoder(nn.Module):
    """Token ids [B, L] -> hidden states [B, L, D] after every residual block (before the final norm).

    Attributes:
      layers: registered layer names, one pre-norm residual block each.
      vocab_size, dim, position_embedding: as in `LanguageModel`.
      layer_overrides: (layer name, ((key, value), ...)) pairs updating that layer's default config.
      resolved_layers: (name, module class, default config) per layer, from the registry when the
        model is constructed (`registry.resolve_layers`); later registry changes do not reach it.
    """

    layers: tuple[str, ...]
    vocab_size: int
    max_length: int
    dim: int = 128
    norm: str = "layernorm"
    layer_overrides: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    position_embedding: str = "none"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    resolved_layers: tuple[ResolvedLayer, ...] = ()

    def __post_init__(self):
        resolve_in_place(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens_BxL: jnp.ndarray) -> jnp.ndarray:
        _check_length(tokens_BxL, self.max_length)
        x_BxLxD = Embed(self.vocab_size, self.dim, self.max_length, self.position_embedding,
                        dtype=self.dtype, param_dtype=self.param_dtype, name="embed")(tokens_BxL)
        overrides = dict(self.layer_overrides)
        for i, (name, module, defaults) in enumerate(self.resolved_layers):
            x_BxLxD = Block(name, module, defaults, overrides.get(name, ()), self.norm,
                            self.max_length, dtype=self.dtype, param_dtype=self.param_dtype,
                            name=f"block_{i}")(x_BxLxD)
        return x_BxLxD


class LanguageModel(nn.Module):
    """Causal language model over a striped hybrid of registered layers.

    Attributes:
      layers: registered layer names, one residual block each.
      vocab_size: number of token ids.
      max_length: longest input the model is built for (inputs may be shorter).
      dim: model width D.
      norm: "layernorm" (default) or "rmsnorm".
      layer_overrides: (layer name, ((key, value), ...)) pairs updating that layer's default config.
      position_embedding: "none" (default, as in MAD) or "sincos".
      resolved_layers: (name, module class, default config) per layer (see `Encoder`).
    """

    layers: tuple[str, ...]
    vocab_size: int
    max_length: int
    dim: int = 128
    norm: str = "layernorm"
    layer_overrides: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    position_embedding: str = "none"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    resolved_layers: tuple[ResolvedLayer, ...] = ()

    def __post_init__(self):
        resolve_in_place(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens_BxL: jnp.ndarray) -> jnp.ndarray:
        """Token ids [B, L] -> next-token logits [B, L, V] (float32)."""
        x_BxLxD = Encoder(self.layers, self.vocab_size, self.max_length, self.dim, self.norm,
                          self.layer_overrides, self.position_embedding, dtype=self.dtype,
                          param_dtype=self.param_dtype, resolved_layers=self.resolved_layers,
                          name="encoder")(tokens_BxL)
        return Unembed(self.vocab_size, self.norm, dtype=self.dtype, param_dtype=self.param_dtype,
                       name="unembed")(x_BxLxD)


def resolve_in_place(module: nn.Module) -> None:
    """Sets a backbone's `resolved_layers` from its `layers` (kept when a clone's names match).

    Called from `__post_init__`, before flax freezes the fields."""
    object.__setattr__(module, "resolved_layers",
                       resolve_layers(module.layers, module.resolved_layers))


def _check_length(tokens_BxL: jnp.ndarray, max_length: int) -> None:
    if tokens_BxL.ndim != 2:
        raise ValueError(f"tokens must be [batch, length] integers, got shape {tokens_BxL.shape}")
    if tokens_BxL.shape[1] > max_length:
        raise ValueError(f"input length {tokens_BxL.shape[1]} exceeds max_length={max_length}; "
                         "build the model with a larger max_length")

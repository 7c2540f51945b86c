"""The `autoencoder` backbone of the compression task.

The encoder is the language model's stack of blocks; its hidden state at the last position is the
code. A fixed, non-expanding two-layer MLP decodes the code plus a sinusoidal position embedding
into every input position, and a norm + linear map gives the token logits.

Initialisation is the reference's `AutoEncoder._init_weights`, which runs over the whole model
after the layers are built: every `nn.Linear`, in the layers as in the decoder and unembedding,
starts with N(0, 0.02) weights and zero biases (not PyTorch's default or a layer's own init, and
unlike the language model, which only zeroes the biases). Here the parameters whose initialisers
are marked as Linear ones (`layers.initializers.linear_weight` / `linear_bias`) take those
inits inside `linear_init_override`; convolutions, embeddings, norms and other parameters keep
theirs, as in the reference.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mad_jax.layers.initializers import linear_init_override
from mad_jax.layers.registry import ResolvedLayer
from mad_jax.models.blocks import make_norm
from mad_jax.models.language_model import Encoder, Unembed, resolve_in_place
from mad_jax.models.positions import sincos_positions

LINEAR_INIT_STD = 0.02  # the reference autoencoder's `initializer_range`


class Decoder(nn.Module):
    """code [B, D] -> per-position hidden states [B, L, D] for `length` positions."""

    length: int
    norm: str = "layernorm"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, code_BxD: jnp.ndarray) -> jnp.ndarray:
        dim = code_BxD.shape[-1]
        pos_LxD = sincos_positions(self.length, dim).astype(code_BxD.dtype)
        x_BxLxD = code_BxD[:, None, :] + pos_LxD[None]
        for i in range(2):
            x_BxLxD = make_norm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype,
                                name=f"norm_{i}")(x_BxLxD)
            kernel_init = nn.initializers.normal(LINEAR_INIT_STD)
            x_BxLxD = nn.Dense(
                dim, dtype=self.dtype, param_dtype=self.param_dtype, name=f"dense_{i}",
                kernel_init=nn.with_logical_partitioning(kernel_init, ("embed", "mlp")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(x_BxLxD)
            x_BxLxD = nn.gelu(x_BxLxD, approximate=False)
        return x_BxLxD


class AutoEncoder(nn.Module):
    """Sequence autoencoder: tokens [B, L] -> logits [B, L, V] reconstructing every input token.

    Attributes are those of `LanguageModel`; the encoder is causal, so the last position is the
    only one that has seen the whole sequence, and it alone is decoded.
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
        # Parameters are created on the first call (init), inside this override.
        with linear_init_override(nn.initializers.normal(LINEAR_INIT_STD), nn.initializers.zeros):
            x_BxLxD = Encoder(self.layers, self.vocab_size, self.max_length, self.dim, self.norm,
                              self.layer_overrides, self.position_embedding, dtype=self.dtype,
                              param_dtype=self.param_dtype, resolved_layers=self.resolved_layers,
                              name="encoder")(tokens_BxL)
            code_BxD = x_BxLxD[:, -1, :]
            h_BxLxD = Decoder(tokens_BxL.shape[1], self.norm, dtype=self.dtype,
                              param_dtype=self.param_dtype, name="decoder")(code_BxD)
            return Unembed(self.vocab_size, self.norm, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="unembed")(h_BxLxD)

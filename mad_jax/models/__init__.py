"""Backbones (language model, autoencoder), the striped-hybrid builder, and model accounting."""
from mad_jax.models.accounting import (count_params, flops, layer_flops, layer_state_size,
                                       state_size)
from mad_jax.models.autoencoder import AutoEncoder
from mad_jax.models.build import BACKBONES, build
from mad_jax.models.hybrid import format_layers, parse_layers
from mad_jax.models.language_model import Encoder, LanguageModel

__all__ = ["AutoEncoder", "BACKBONES", "Encoder", "LanguageModel", "build", "count_params", "flops",
           "format_layers", "layer_flops", "layer_state_size", "parse_layers", "state_size"]

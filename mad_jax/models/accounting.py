"""Parameter, FLOP and inference-state accounting for whole models.

MAD compares architectures at equal state and equal parameters; these functions give the numbers
from each layer's own `flops` / `state_size` methods (see mad_jax/layers/accounting.py for the
FLOP conventions) without building or running the model.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np

from mad_jax.layers import registry
from mad_jax.layers.accounting import dense_flops
from mad_jax.models.hybrid import parse_layers


def count_params(params: Any) -> int:
    """Number of scalar parameters in a parameter pytree (boxed or plain arrays)."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))


def _layer(name: str, layer_configs: Mapping[str, Mapping[str, Any]] | None):
    return registry.make_layer(name, **dict((layer_configs or {}).get(name, {})))


def _check_sizes(**sizes: Any) -> None:
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


def _require(layer, method: str, name: str):
    fn = getattr(layer, method, None)
    if fn is None:
        raise NotImplementedError(f"layer {name!r} ({type(layer).__name__}) has no `{method}(dim, seq_len)` "
                                  "method; add one to count it")
    return fn


def layer_flops(name: str, *, dim: int, seq_len: int,
                layer_configs: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """Forward FLOPs per sequence of one registered layer."""
    _check_sizes(dim=dim, seq_len=seq_len)
    return int(_require(_layer(name, layer_configs), "flops", name)(dim=dim, seq_len=seq_len))


def layer_state_size(name: str, *, dim: int, seq_len: int,
                     layer_configs: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """Numbers one registered layer keeps per sequence to generate the next token."""
    _check_sizes(dim=dim, seq_len=seq_len)
    return int(_require(_layer(name, layer_configs), "state_size", name)(dim=dim, seq_len=seq_len))


def flops(layers: str | Sequence[str], *, dim: int, seq_len: int, vocab_size: int,
          backbone: str = "language-model",
          layer_configs: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """Forward FLOPs per sequence of a whole model: every layer plus the unembedding matmul.

    The autoencoder adds its two-layer D x D decoder at every position. Norms, the embedding
    lookup and residual additions are not counted.
    """
    _check_sizes(dim=dim, seq_len=seq_len, vocab_size=vocab_size)
    names = parse_layers(layers)
    total = sum(layer_flops(n, dim=dim, seq_len=seq_len, layer_configs=layer_configs) for n in names)
    total += dense_flops(seq_len, dim, vocab_size)
    if backbone == "autoencoder":
        total += 2 * dense_flops(seq_len, dim, dim)
    return int(total)


def state_size(layers: str | Sequence[str], *, dim: int, seq_len: int,
               layer_configs: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """Recurrent / cache state per sequence, in numbers, summed over the layers."""
    names = parse_layers(layers)
    return int(sum(layer_state_size(n, dim=dim, seq_len=seq_len, layer_configs=layer_configs)
                   for n in names))

"""Cross-entropy and accuracy over scored positions (targets == -100 are not scored)."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


class TokenStats(NamedTuple):
    """Sums over the scored positions of a batch; divide by `count` for means."""

    loss_sum: jax.Array   # summed cross-entropy
    correct: jax.Array    # positions whose argmax equals the target
    count: jax.Array      # scored positions


def token_stats(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> TokenStats:
    """Cross-entropy (float32) and argmax hits summed over positions with target >= 0."""
    mask_BxL = targets_BxL != IGNORE_INDEX
    safe_BxL = jnp.where(mask_BxL, targets_BxL, 0)
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    nll_BxL = -jnp.take_along_axis(logp_BxLxV, safe_BxL[..., None], axis=-1)[..., 0]
    hit_BxL = jnp.argmax(logits_BxLxV, axis=-1) == safe_BxL
    return TokenStats(
        loss_sum=jnp.sum(jnp.where(mask_BxL, nll_BxL, 0.0)),
        correct=jnp.sum(hit_BxL & mask_BxL).astype(jnp.float32),
        count=jnp.sum(mask_BxL).astype(jnp.float32))


def mean_cross_entropy(stats: TokenStats) -> jax.Array:
    """Mean over scored positions (torch's CrossEntropyLoss(ignore_index=-100) reduction)."""
    return stats.loss_sum / jnp.maximum(stats.count, 1.0)


def accuracy(stats: TokenStats) -> jax.Array:
    """Fraction of scored positions whose argmax is the target (0 when none are scored)."""
    return stats.correct / jnp.maximum(stats.count, 1.0)


def sum_aux_losses(collections) -> jax.Array:
    """Sum of every leaf of the "losses" collection a model sowed (MoE balancing); 0 if none."""
    leaves = jax.tree_util.tree_leaves(collections.get("losses", {}) if collections else {})
    return sum((jnp.sum(x.astype(jnp.float32)) for x in leaves), jnp.zeros((), jnp.float32))

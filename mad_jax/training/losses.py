"""Cross-entropy and accuracy over scored positions (targets == -100 are not scored).

Two accuracies are kept. Micro (per-token) accuracy is the fraction of scored positions whose
argmax is the target. Macro accuracy is what the MAD reference scores with (torchmetrics
`MulticlassAccuracy(num_classes=V, ignore_index=-100)`, whose default `average="macro"`): the
recall of each class (token id) over the whole test set, averaged over the classes that occur in
the targets or in the predictions; a class that is only ever predicted has recall 0 and counts.
Both are computed from sums (`TokenStats`, `ClassStats`) so they accumulate over batches.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mad_jax.tasks.registry import IGNORE_INDEX


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


class ClassStats(NamedTuple):
    """Per-class counts over the scored positions of a batch, each float32[V]."""

    hits: jax.Array         # positions of target class c predicted as c (true positives)
    targets: jax.Array      # positions whose target is c (support)
    predictions: jax.Array  # positions predicted as c


def class_stats(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> ClassStats:
    """Per-class hits, support and prediction counts over positions with target != -100."""
    num_classes = logits_BxLxV.shape[-1]
    mask_BxL = (targets_BxL != IGNORE_INDEX).astype(jnp.float32)
    safe_BxL = jnp.where(targets_BxL != IGNORE_INDEX, targets_BxL, 0)
    pred_BxL = jnp.argmax(logits_BxLxV, axis=-1)
    hit_BxL = (pred_BxL == safe_BxL).astype(jnp.float32) * mask_BxL
    zeros_V = jnp.zeros((num_classes,), jnp.float32)
    return ClassStats(hits=zeros_V.at[safe_BxL.ravel()].add(hit_BxL.ravel()),
                      targets=zeros_V.at[safe_BxL.ravel()].add(mask_BxL.ravel()),
                      predictions=zeros_V.at[pred_BxL.ravel()].add(mask_BxL.ravel()))


def macro_accuracy(hits, targets, predictions):
    """Mean per-class recall over the classes present in targets or predictions (the reference's).

    Arguments are `ClassStats` fields summed over the test set, float[..., V] (a leading run axis
    is kept). A class with no target but some predictions has recall 0; a class with neither is
    left out; with no scored position at all the result is 0. Works on numpy and jax arrays.
    """
    xp = jnp if isinstance(hits, jax.Array) else np
    present = (targets + predictions) > 0
    recall = xp.where(targets > 0, hits / xp.maximum(targets, 1.0), 0.0)
    n_present = present.sum(-1)
    return xp.where(n_present > 0, (recall * present).sum(-1) / xp.maximum(n_present, 1), 0.0)


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

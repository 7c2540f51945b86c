"""AdamW with learning rate and weight decay as array inputs, and the cosine schedule.

The peak learning rate and the weight decay live in the train state as arrays (one per run under
the vmapped grid); each step writes the scheduled learning rate and the weight decay into
`optax.inject_hyperparams`'s state before the update, so one compiled program serves every run.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax


def cosine_learning_rate(step: jax.Array, total_steps: jax.Array, peak: jax.Array,
                         end: float = 1e-6) -> jax.Array:
    """Cosine decay from `peak` at step 0 to `end` at `total_steps` (no warmup, as the reference).

    The reference steps torch's CosineAnnealingLR once per epoch; we decay per step, the same curve
    without the staircase.
    """
    total = jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0)
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / total, 0.0, 1.0)
    return end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


def decay_mask(params):
    """Weight decay applies to matrices and embeddings, not to biases, norm scales or other vectors.

    The reference excludes parameters named "bias" or "norm"; for Flax parameter trees "ndim >= 2
    and no 'norm' in the path" picks the same set.
    """
    def keep(path, leaf):
        names = [str(getattr(k, "key", getattr(k, "name", k))).lower() for k in path]
        return leaf.ndim >= 2 and not any("norm" in n for n in names)
    return jax.tree_util.tree_map_with_path(keep, params)


@functools.lru_cache(maxsize=None)
def make_optimizer(*, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                   ) -> optax.GradientTransformation:
    """AdamW whose learning_rate and weight_decay are injected hyperparameters (set every step).

    Cached: equal constants return the same transformation, so compiled programs that take it
    as a static argument are reused.
    """
    return optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=0.0, weight_decay=0.0, b1=b1, b2=b2, eps=eps, mask=decay_mask)


def set_hyperparams(opt_state, **values: jax.Array):
    """Returns `opt_state` (an inject_hyperparams state) with hyperparameters replaced."""
    hyperparams = dict(opt_state.hyperparams)
    for name, value in values.items():
        if name not in hyperparams:
            raise KeyError(f"optimizer has no hyperparameter {name!r}: {sorted(hyperparams)}")
        hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
    return opt_state._replace(hyperparams=hyperparams)

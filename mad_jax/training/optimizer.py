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
                         end: float = 1e-6, decay_every_steps: jax.Array | int = 1) -> jax.Array:
    """Cosine decay from `peak` at step 0 towards `end` at `total_steps` (no warmup, as the reference).

    The rate changes every `decay_every_steps` steps and is held in between: 1 decays per step; the
    steps of one epoch give the reference's staircase (torch's `CosineAnnealingLR(T_max=epochs,
    eta_min=1e-6)` stepped once per epoch: epoch e trains at the rate of `e / epochs`).
    """
    every = jnp.maximum(jnp.asarray(decay_every_steps, jnp.int32), 1)
    held = (jnp.asarray(step, jnp.int32) // every) * every
    total = jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0)
    frac = jnp.clip(held.astype(jnp.float32) / total, 0.0, 1.0)
    return end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


@functools.lru_cache(maxsize=None)
def make_optimizer(*, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                   ) -> optax.GradientTransformation:
    """AdamW whose learning_rate and weight_decay are injected hyperparameters (set every step).

    Weight decay applies to every parameter, biases and norm scales included, as the reference's
    `torch.optim.AdamW(model.parameters(), weight_decay=wd)` does (decoupled: `p -= lr * wd * p`).

    Cached: equal constants return the same transformation, so compiled programs that take it
    as a static argument are reused.
    """
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=0.0, weight_decay=0.0, b1=b1, b2=b2, eps=eps)


def set_hyperparams(opt_state, **values: jax.Array):
    """Returns `opt_state` (an inject_hyperparams state) with hyperparameters replaced."""
    hyperparams = dict(opt_state.hyperparams)
    for name, value in values.items():
        if name not in hyperparams:
            raise KeyError(f"optimizer has no hyperparameter {name!r}: {sorted(hyperparams)}")
        hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
    return opt_state._replace(hyperparams=hyperparams)

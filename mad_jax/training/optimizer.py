"""AdamW with learning rate and weight decay as array inputs, and the one learning-rate schedule.

The peak learning rate, the weight decay and the schedule's shape live in the train state as
arrays (one per run under the vmapped grid); each step writes the scheduled learning rate and the
weight decay into `optax.inject_hyperparams`'s state before the update, so one compiled program
serves every run, budget and schedule.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax


def warmup_cosine(step: jax.Array, *, total_steps: jax.Array, peak: jax.Array, floor: jax.Array,
                  warmup_steps: jax.Array | int = 0,
                  decay_every_steps: jax.Array | int = 1) -> jax.Array:
    """Linear warmup to `peak` over `warmup_steps`, then cosine decay to `floor` at `total_steps`.

    With `warmup_steps=0` this is the MAD reference's schedule: cosine from step 0. The rate
    changes every `decay_every_steps` steps and is held in between: 1 decays per step; the steps
    of one epoch give the reference's staircase (torch's `CosineAnnealingLR(T_max=epochs,
    eta_min=1e-6)` stepped once per epoch: epoch e trains at the rate of `e / epochs`).
    Pretraining warms up (`scaling.pretrain`). Every argument may be a traced array.
    """
    every = jnp.maximum(jnp.asarray(decay_every_steps, jnp.int32), 1)
    held = ((jnp.asarray(step, jnp.int32) // every) * every).astype(jnp.float32)
    warm = jnp.asarray(warmup_steps, jnp.float32)
    total = jnp.asarray(total_steps, jnp.float32)
    frac = jnp.clip((held - warm) / jnp.maximum(total - warm, 1.0), 0.0, 1.0)
    cosine = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    step_f = jnp.asarray(step, jnp.float32)
    return jnp.where(step_f < warm, peak * (step_f + 1.0) / jnp.maximum(warm, 1.0), cosine)


@functools.lru_cache(maxsize=None)
def make_optimizer(*, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   grad_clip: float = 0.0) -> optax.GradientTransformation:
    """AdamW whose learning_rate and weight_decay are injected hyperparameters (set every step).

    Weight decay applies to every parameter, biases and norm scales included, as the reference's
    `torch.optim.AdamW(model.parameters(), weight_decay=wd)` does (decoupled: `p -= lr * wd * p`).
    grad_clip > 0 clips the global gradient norm first (pretraining); 0 (the MAD protocol, as the
    reference) leaves gradients as they are.

    Cached: equal constants return the same transformation, so compiled programs that take it
    as a static argument are reused.
    """
    def adamw(learning_rate, weight_decay):
        tx = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
        return optax.chain(optax.clip_by_global_norm(grad_clip), tx) if grad_clip > 0 else tx

    return optax.inject_hyperparams(adamw)(learning_rate=0.0, weight_decay=0.0)


def set_hyperparams(opt_state, **values: jax.Array):
    """Returns `opt_state` (an inject_hyperparams state) with hyperparameters replaced."""
    hyperparams = dict(opt_state.hyperparams)
    for name, value in values.items():
        if name not in hyperparams:
            raise KeyError(f"optimizer has no hyperparameter {name!r}: {sorted(hyperparams)}")
        hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
    return opt_state._replace(hyperparams=hyperparams)

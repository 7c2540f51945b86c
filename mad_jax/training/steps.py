"""The train state and the pure train / eval steps: `(state, batch) -> (state, metrics)`.

Steps are plain functions; callers jit them (with donation, and later with mesh shardings), and
the hyperparameter grid vmaps them. A batch is `{"inputs": int32[B, L], "targets": int32[B, L]}`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.core import meta

from mad_jax import xla_cpu_flags
from mad_jax.training import losses
from mad_jax.training.optimizer import set_hyperparams, warmup_cosine
from mad_jax.training.precision import cast_params, compute_model


@struct.dataclass
class TrainState:
    """One run's state. Every field is an array, so states stack along a leading grid axis."""

    step: jax.Array        # int32 scalar: steps taken (= batches consumed)
    params: Any
    opt_state: Any         # optax.inject_hyperparams(adamw) state
    rng: jax.Array         # uint32[2] raw key data; step keys are fold_in(rng, step)
    hparams: dict          # {"learning_rate": peak, "weight_decay": wd, "total_steps": schedule
                           # length, "decay_every_steps": 1 (per step) or an epoch's steps,
                           # "warmup_steps", "min_learning_rate": the schedule's floor}: arrays,
                           # so one compiled step serves any run, budget and schedule


def _init_variables(model: nn.Module, rng: jax.Array, sample_inputs_BxL: jax.Array):
    return model.init(rng, sample_inputs_BxL)


@functools.cache
def _compiled_init(platform: str) -> Callable:
    """The jitted init for `platform`, compiled as a program that runs once
    (`xla_cpu_flags.run_once_options`)."""
    return jax.jit(_init_variables, static_argnums=0,
                   compiler_options=xla_cpu_flags.run_once_options(platform))


def init_params(model: nn.Module, rng: jax.Array, sample_inputs_BxL: jax.Array):
    """Model parameters from `model.init` (only the "params" collection is trained).

    Flax modules hash by their fields, so equal models share one compiled init; it is compiled
    as a program that runs once (on the CPU without LLVM optimisation: `mad_jax.xla_cpu_flags`).
    """
    platform = xla_cpu_flags.default_platform()
    try:
        hash(model)
    except TypeError:  # a module with unhashable fields: compile for this call only
        init = jax.jit(model.init, compiler_options=xla_cpu_flags.run_once_options(platform))
        return init(rng, sample_inputs_BxL)["params"]
    return _compiled_init(platform)(model, rng, sample_inputs_BxL)["params"]


def init_train_state(params, tx: optax.GradientTransformation, *, learning_rate, weight_decay,
                     total_steps, rng: jax.Array, decay_every_steps=1, warmup_steps=0,
                     min_learning_rate=1e-6) -> TrainState:
    """A fresh state at step 0 for one (learning rate, weight decay) and schedule
    (`optimizer.warmup_cosine`).

    decay_every_steps: 1 decays the learning rate every step; an epoch's steps gives the
    reference's per-epoch staircase. warmup_steps: 0 for the MAD protocol (as the reference).
    """
    hparams = {"learning_rate": jnp.asarray(learning_rate, jnp.float32),
               "weight_decay": jnp.asarray(weight_decay, jnp.float32),
               "total_steps": jnp.asarray(total_steps, jnp.int32),
               "decay_every_steps": jnp.asarray(decay_every_steps, jnp.int32),
               "warmup_steps": jnp.asarray(warmup_steps, jnp.int32),
               "min_learning_rate": jnp.asarray(min_learning_rate, jnp.float32)}
    opt_state = set_hyperparams(tx.init(params), learning_rate=hparams["learning_rate"],
                                weight_decay=hparams["weight_decay"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      rng=rng, hparams=hparams)


def _forward(model: nn.Module, params, inputs_BxL, rng=None, param_dtype=None):
    rngs = {"dropout": rng} if rng is not None else None
    logits_BxLxV, collections = model.apply({"params": cast_params(params, param_dtype)},
                                            inputs_BxL, mutable=["losses"], rngs=rngs)
    return logits_BxLxV.astype(jnp.float32), losses.sum_aux_losses(collections)


def make_create_state(model: nn.Module, tx: optax.GradientTransformation, sample_inputs_BxL, *,
                      learning_rate, weight_decay, total_steps, decay_every_steps=1) -> Callable:
    """`create(rng) -> TrainState`: fresh unboxed parameters from `model.init(rng, sample)` and a
    state at step 0. Pure, so `jax.eval_shape` and a sharded `jax.jit` can build the state
    (`mad_jax.sharding.Partitioner.init`) without materialising it unsharded."""
    def create(rng: jax.Array) -> TrainState:
        params = meta.unbox(model.init(rng, sample_inputs_BxL)["params"])
        return init_train_state(params, tx, learning_rate=learning_rate,
                                weight_decay=weight_decay, total_steps=total_steps,
                                rng=jax.random.key_data(rng),
                                decay_every_steps=decay_every_steps)
    return create


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    precision: str = "float32") -> Callable:
    """Returns `train_step(state, batch) -> (state, metrics)`, pure and un-jitted.

    Objective: mean cross-entropy over scored positions plus every auxiliary loss the model sows
    into the "losses" collection. The learning rate follows `optimizer.warmup_cosine` over the
    state's hparams; gradient clipping, if any, is part of `tx` (`make_optimizer(grad_clip=)`).
    Metrics are scalars: loss, cross_entropy, aux_loss, accuracy (micro), grad_norm (before
    clipping), learning_rate.
    precision: "float32" or "bfloat16" (bf16 compute, float32 parameters: `precision.py`).
    """
    model, param_dtype = compute_model(model, precision)

    def loss_fn(params, batch, rng):
        logits_BxLxV, aux_loss = _forward(model, params, batch["inputs"], rng, param_dtype)
        stats = losses.token_stats(logits_BxLxV, batch["targets"])
        ce = losses.mean_cross_entropy(stats)
        return ce + aux_loss, (ce, aux_loss, losses.accuracy(stats))

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        h = state.hparams
        lr = warmup_cosine(state.step, total_steps=h["total_steps"], peak=h["learning_rate"],
                           floor=h["min_learning_rate"], warmup_steps=h["warmup_steps"],
                           decay_every_steps=h["decay_every_steps"])
        opt_state = set_hyperparams(state.opt_state, learning_rate=lr,
                                    weight_decay=h["weight_decay"])
        step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        (loss, (ce, aux_loss, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, step_rng)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        metrics = {"loss": loss, "cross_entropy": ce, "aux_loss": aux_loss, "accuracy": acc,
                   "grad_norm": optax.tree.norm(grads), "learning_rate": lr}
        return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module, *, precision: str = "float32") -> Callable:
    """Returns `eval_step(state, batch) -> metrics`, sums over the batch's scored positions:
    loss_sum, correct, count (`losses.TokenStats`) and the per-class counts class_hits,
    class_targets, class_predictions (float32[V], `losses.ClassStats`) for macro accuracy."""
    model, param_dtype = compute_model(model, precision)

    def eval_step(state: TrainState, batch) -> dict:
        logits_BxLxV, _ = _forward(model, state.params, batch["inputs"], None, param_dtype)
        classes = losses.class_stats(logits_BxLxV, batch["targets"])
        return dict(losses.token_stats(logits_BxLxV, batch["targets"])._asdict(),
                    class_hits=classes.hits, class_targets=classes.targets,
                    class_predictions=classes.predictions)

    return eval_step

"""The hyperparameter grid as one program: runs stacked along a leading axis, stepped by jax.vmap.

The runs of a grid see the same batches in the same order; they start from the same initial
parameters, or, with a seed axis, from one set of initial parameters per seed. The vmapped
program computes exactly what the runs would compute one after another.
A run stops (its state is frozen, the others go on) when its loss turns non-finite or when the
training loop marks it inactive (test accuracy reached the stopping threshold).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mad_jax.training.steps import TrainState, init_train_state

# The MAD protocol's grid: learning rate x weight decay.
LEARNING_RATES = (1e-4, 5e-4, 1e-3)
WEIGHT_DECAYS = (0.0, 0.1)
DEFAULT_GRID = tuple((lr, wd) for lr in LEARNING_RATES for wd in WEIGHT_DECAYS)


@struct.dataclass
class GridState:
    """R runs: every leaf of `runs` has a leading axis of size R."""

    runs: TrainState
    active: jax.Array       # bool[R]: still training
    stop_step: jax.Array    # int32[R]: step at which the run stopped, -1 while active
    nonfinite: jax.Array    # bool[R]: stopped because the loss or gradient was NaN/inf

    @property
    def size(self) -> int:
        return int(self.active.shape[0])


@functools.partial(jax.jit, static_argnums=(0, 6))
def _init_runs(tx, params, lrs, wds, rng, schedule, stacked) -> TrainState:
    # Jitted: every leaf gets its own buffer (the state is donated; no two leaves may share one).
    def init(p, lr, wd, key, run_schedule):
        return init_train_state(p, tx, learning_rate=lr, weight_decay=wd, rng=key,
                                **run_schedule)
    axis = 0 if stacked else None
    return jax.vmap(init, in_axes=(axis, 0, 0, axis, 0))(params, lrs, wds, rng, schedule)


def init_grid_state(params, tx: optax.GradientTransformation, grid: Sequence[tuple[float, float]],
                    *, total_steps: int | Sequence[int], rng: jax.Array,
                    decay_every_steps: int | Sequence[int] = 1,
                    warmup_steps: int = 0, min_learning_rate: float = 1e-6,
                    stacked: bool = False) -> GridState:
    """Stacks one fresh TrainState per (lr, wd) of `grid`.

    params, rng: shared by every run, or (stacked=True) one per run along a leading axis of size
    len(grid) (the seed axis: each seed's own initial parameters and dropout key).
    total_steps, decay_every_steps, warmup_steps, min_learning_rate: the schedule
    (`optimizer.warmup_cosine`); total_steps and decay_every_steps may be one value per run (a
    packed grid: runs of settings whose training sets differ in size, each in its own epochs).
    """
    r = len(grid)
    lrs = jnp.asarray([g[0] for g in grid], jnp.float32)
    wds = jnp.asarray([g[1] for g in grid], jnp.float32)
    per_run = lambda value, dtype: jnp.broadcast_to(jnp.asarray(value, dtype), (r,))  # noqa: E731
    schedule = {"total_steps": per_run(total_steps, jnp.int32),
                "decay_every_steps": per_run(decay_every_steps, jnp.int32),
                "warmup_steps": per_run(warmup_steps, jnp.int32),
                "min_learning_rate": per_run(min_learning_rate, jnp.float32)}
    try:
        runs = _init_runs(tx, params, lrs, wds, rng, schedule, stacked)
    except TypeError:  # an optimizer that cannot be a static (hashable) argument
        runs = jax.jit(_init_runs.__wrapped__, static_argnums=(0, 6))(
            tx, params, lrs, wds, rng, schedule, stacked)
    return GridState(runs=runs, active=jnp.ones((r,), bool),
                     stop_step=jnp.full((r,), -1, jnp.int32), nonfinite=jnp.zeros((r,), bool))


def run_state(grid_state: GridState, index: int) -> TrainState:
    """The TrainState of run `index` (leading axis removed)."""
    return jax.tree_util.tree_map(lambda x: x[index], grid_state.runs)


def make_grid_train_step(train_step: Callable, *, vmapped: bool = True,
                         packed: bool = False) -> Callable:
    """`grid_train_step(grid_state, batch) -> (grid_state, metrics[R])` from a single-run step.

    vmapped=True steps all R runs in one program (batch shared, not mapped). vmapped=False needs
    R == 1 and calls the plain single-run step: that is how runs are trained one after another.
    packed=True (vmapped): runs of different settings in one program. Each run gets its own batch
    (batch leaves [R, B, ...]) and stops at its own `total_steps`; a run that did not step (done,
    stopped or failed) reports zeros and `stepped` 0, so sums over steps are its own.
    """
    if packed and not vmapped:
        raise ValueError("a packed grid is vmapped: pass vmapped=True")
    if vmapped:
        step_all = jax.vmap(train_step, in_axes=(0, 0 if packed else None))
    else:
        def step_all(runs, batch):
            if jax.tree_util.tree_leaves(runs)[0].shape[0] != 1:
                raise ValueError("vmapped=False steps one run at a time: grid size must be 1")
            state, metrics = train_step(jax.tree_util.tree_map(lambda x: x[0], runs), batch)
            return jax.tree_util.tree_map(lambda x: x[None], (state, metrics))

    def grid_train_step(grid_state: GridState, batch) -> tuple[GridState, dict]:
        new_runs, metrics = step_all(grid_state.runs, batch)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        active, stop_step = grid_state.active, grid_state.stop_step
        if packed:  # a run past its own budget is done: frozen, like a stopped one
            budget_left = grid_state.runs.step < grid_state.runs.hparams["total_steps"]
            stop_step = jnp.where(active & ~budget_left, grid_state.runs.step, stop_step)
            active = active & budget_left
        keep = active & finite
        runs = jax.tree_util.tree_map(
            lambda new, old: jnp.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
            new_runs, grid_state.runs)
        just_failed = active & ~finite
        new_grid = grid_state.replace(
            runs=runs, active=keep,
            stop_step=jnp.where(just_failed, new_runs.step, stop_step),
            nonfinite=grid_state.nonfinite | just_failed)
        if packed:
            metrics = {k: jnp.where(keep, v, jnp.zeros_like(v)) for k, v in metrics.items()}
            metrics["stepped"] = keep.astype(jnp.float32)
        return new_grid, metrics

    return grid_train_step


def make_grid_eval_step(eval_step: Callable, *, vmapped: bool = True,
                        packed: bool = False) -> Callable:
    """`grid_eval_step(grid_state, batch) -> metrics[R]` from a single-run eval step; packed:
    each run evaluates its own batch (batch leaves [R, B, ...])."""
    if vmapped:
        eval_all = jax.vmap(eval_step, in_axes=(0, 0 if packed else None))
    else:
        def eval_all(runs, batch):
            metrics = eval_step(jax.tree_util.tree_map(lambda x: x[0], runs), batch)
            return jax.tree_util.tree_map(lambda x: x[None], metrics)

    def grid_eval_step(grid_state: GridState, batch) -> dict:
        return eval_all(grid_state.runs, batch)

    return grid_eval_step


def make_grid_evaluate(grid_eval_step: Callable) -> Callable:
    """`evaluate(grid_state, inputs_NbxBxL, targets_NbxBxL) -> metrics[R]` summed over all batches.

    One program scans the whole (padded) test set, so evaluation is a single dispatch. For a
    packed grid the eval sets are [Nb, R, B, L]: batch b of every run's own set, side by side.
    """
    def evaluate(grid_state: GridState, inputs_NbxBxL, targets_NbxBxL) -> dict:
        def body(total, batch):
            stats = grid_eval_step(grid_state, {"inputs": batch[0], "targets": batch[1]})
            return jax.tree_util.tree_map(jnp.add, total, stats), None

        zero = jax.eval_shape(grid_eval_step, grid_state,
                              {"inputs": inputs_NbxBxL[0], "targets": targets_NbxBxL[0]})
        zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
        total, _ = jax.lax.scan(body, zero, (inputs_NbxBxL, targets_NbxBxL))
        return total

    return evaluate

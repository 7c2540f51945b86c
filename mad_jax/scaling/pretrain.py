"""Language-model pretraining of one model on token windows: the inner loop of an IsoFLOP sweep.

Reuses mad_jax.training's pieces (AdamW with injected hyperparameters, `TrainState`, token
cross-entropy, the eval step, orbax checkpoints) and mad_jax.sharding (mesh, sharded init and
steps). The train step is its own: pretraining wants a linear warmup before the cosine decay and
global-norm gradient clipping, which the MAD task trainer (cosine from step 0, as the MAD
reference) does not do. Warmup, total steps and the floor of the schedule live in the state's
`hparams` as arrays, so one compiled step serves every budget a model is trained at.

Batches are windows [B, L + 1]: inputs are the first L tokens, targets the last L. Each host reads
its own rows (`window_source.train_batches`) and the global batch is assembled with
`jax.make_array_from_process_local_data`.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mad_jax import sharding, training
from mad_jax.scaling import window_source
from mad_jax.training import losses, signals
from mad_jax.training.optimizer import set_hyperparams


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run.

    Attributes:
      seq_len: model input length L.
      global_batch: sequences per step over all hosts.
      total_steps: optimizer steps (the token budget is total_steps * global_batch * seq_len).
      learning_rate: peak learning rate after warmup.
      min_learning_rate_ratio: the cosine decays to this fraction of the peak (Chinchilla: 0.1).
      warmup_fraction, max_warmup_steps: linear warmup over min(fraction * total, max) steps.
      weight_decay, b1, b2, eps: AdamW (decay on matrices and embeddings only).
      grad_clip: global gradient-norm clip (0 disables).
      eval_every_steps: also evaluate during training (0: only at the end).
      eval_batch: sequences per eval step.
      log_every_steps: progress lines (and loss-curve points) every that many steps (0: ten a run).
      checkpoint_every_steps: save state and data position (0: never); needs `checkpoint_dir`.
      seed: model init; `data_seed` picks the windows.
      mesh: mesh axis sizes ("data:-1"; "data:-1,fsdp:4" for big models).
    """

    seq_len: int
    global_batch: int
    total_steps: int
    learning_rate: float = 3e-3
    min_learning_rate_ratio: float = 0.1
    warmup_fraction: float = 0.05
    max_warmup_steps: int = 1000
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_every_steps: int = 0
    eval_batch: int = 32
    log_every_steps: int = 50
    checkpoint_every_steps: int = 0
    seed: int = 0
    data_seed: int = 0
    mesh: str = "data:-1"

    @property
    def warmup_steps(self) -> int:
        return int(min(self.max_warmup_steps, math.ceil(self.warmup_fraction * self.total_steps)))

    @property
    def tokens(self) -> int:
        return self.total_steps * self.global_batch * self.seq_len


def warmup_cosine(step, *, warmup_steps, total_steps, peak, floor):
    """Linear warmup to `peak` over `warmup_steps`, then cosine decay to `floor` at `total_steps`.

    All arguments may be traced arrays (one compiled step for every schedule length).
    """
    step = jnp.asarray(step, jnp.float32)
    warm = peak * (step + 1.0) / jnp.maximum(warmup_steps, 1.0)
    frac = jnp.clip((step - warmup_steps) / jnp.maximum(total_steps - warmup_steps, 1.0), 0.0, 1.0)
    cos = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(step < warmup_steps, warm, cos)


def split_windows(windows_BxW) -> dict:
    """Windows [B, L + 1] -> {"inputs": [B, L], "targets": [B, L]} (next-token targets)."""
    return {"inputs": windows_BxW[:, :-1], "targets": windows_BxW[:, 1:]}


def make_lm_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                       grad_clip: float) -> Callable:
    """`step(state, batch) -> (state, metrics)`: pure, un-jitted.

    The schedule reads `state.hparams` (learning_rate, weight_decay, warmup_steps, total_steps,
    min_learning_rate). Objective: mean next-token cross-entropy plus any sown auxiliary losses.
    Metrics: loss, cross_entropy, aux_loss, grad_norm, learning_rate.
    """
    def loss_fn(params, batch):
        logits_BxLxV, collections = model.apply({"params": params}, batch["inputs"],
                                                mutable=["losses"])
        aux = losses.sum_aux_losses(collections)
        ce = losses.mean_cross_entropy(losses.token_stats(logits_BxLxV, batch["targets"]))
        return ce + aux, (ce, aux)

    def train_step(state: training.TrainState, batch):
        h = state.hparams
        lr = warmup_cosine(state.step, warmup_steps=h["warmup_steps"], total_steps=h["total_steps"],
                           peak=h["learning_rate"], floor=h["min_learning_rate"])
        opt_state = set_hyperparams(state.opt_state, learning_rate=lr,
                                    weight_decay=h["weight_decay"])
        (loss, (ce, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        grad_norm = optax.tree.norm(grads)
        if grad_clip > 0:
            scale = jnp.minimum(1.0, grad_clip / (grad_norm + 1e-6))
            grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "cross_entropy": ce, "aux_loss": aux, "grad_norm": grad_norm,
                   "learning_rate": lr}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def _hparams(config: PretrainConfig) -> dict:
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return {"learning_rate": f32(config.learning_rate), "weight_decay": f32(config.weight_decay),
            "warmup_steps": f32(config.warmup_steps), "total_steps": f32(config.total_steps),
            "min_learning_rate": f32(config.learning_rate * config.min_learning_rate_ratio)}


class _Compiled:
    """Sharded init/train/eval functions of one model shape, reused across budgets."""

    def __init__(self, model: nn.Module, config: PretrainConfig, partitioner: sharding.Partitioner):
        self.partitioner = partitioner
        self.tx = training.make_optimizer(b1=config.b1, b2=config.b2, eps=config.eps)
        sample_BxL = jnp.zeros((1, config.seq_len), jnp.int32)

        def create(rng, hparams):
            params = model.init(rng, sample_BxL)["params"]
            opt_state = set_hyperparams(self.tx.init(sharding.unbox(params)),
                                        learning_rate=hparams["learning_rate"],
                                        weight_decay=hparams["weight_decay"])
            return training.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                       opt_state=opt_state, rng=jax.random.key_data(rng),
                                       hparams=hparams)

        params_specs = sharding.param_specs(model, sample_BxL)
        _, self.state_shardings = partitioner.state_shardings(
            create, jax.random.key(0), _hparams(config), params_specs=params_specs)
        self.batch_shardings = partitioner.batch_shardings(
            {"inputs": np.zeros((config.global_batch, config.seq_len), np.int32),
             "targets": np.zeros((config.global_batch, config.seq_len), np.int32)})
        # `.jitted`: the sharded jit without the mesh/rules context. Under the rules context flax
        # 0.12 re-runs DenseGeneral's boxed kernel init for its shape check inside `apply`, and the
        # logical constraint on the flat init kernel fails (multi-head attention); the in/out
        # shardings alone let GSPMD place everything.
        step_fn = make_lm_train_step(model, self.tx, grad_clip=config.grad_clip)
        self.train_step = partitioner.train_step(step_fn, self.state_shardings,
                                                 self.batch_shardings).jitted
        eval_fn = training.make_eval_step(model)
        self.eval_shardings = partitioner.batch_shardings(
            {"inputs": np.zeros((config.eval_batch, config.seq_len), np.int32),
             "targets": np.zeros((config.eval_batch, config.seq_len), np.int32)})
        self.eval_step = partitioner.eval_step(eval_fn, self.state_shardings,
                                               self.eval_shardings).jitted
        # Created sharded from the start (no unsharded parameters), compiled once per model shape.
        self._init = jax.jit(lambda rng, hparams: sharding.unbox(create(rng, hparams)),
                             out_shardings=self.state_shardings)

    def init(self, config: PretrainConfig):
        return self._init(jax.random.key(config.seed), _hparams(config))


_COMPILED: dict[Any, _Compiled] = {}


def _compiled(model: nn.Module, config: PretrainConfig) -> _Compiled:
    key = (model, config.seq_len, config.global_batch, config.eval_batch, config.grad_clip,
           config.b1, config.b2, config.eps, config.mesh)
    if key not in _COMPILED:
        if len(_COMPILED) > 16:
            _COMPILED.clear()
        _COMPILED[key] = _Compiled(model, config, sharding.Partitioner.create(config.mesh))
    return _COMPILED[key]


def evaluate(compiled: _Compiled, state, eval_windows_ExW: np.ndarray, eval_batch: int) -> dict:
    """Mean next-token loss (nats/token) and perplexity on fixed windows [E, L + 1]."""
    num = (len(eval_windows_ExW) // eval_batch) * eval_batch
    if num == 0:
        raise ValueError(f"need at least eval_batch={eval_batch} eval windows, "
                         f"got {len(eval_windows_ExW)}")
    loss_sum, count = 0.0, 0.0
    for i in range(0, num, eval_batch):
        batch = compiled.partitioner.shard_batch(split_windows(eval_windows_ExW[i:i + eval_batch]),
                                                 compiled.eval_shardings)
        stats = jax.device_get(compiled.eval_step(state, batch))
        loss_sum += float(stats["loss_sum"])
        count += float(stats["count"])
    loss = loss_sum / count
    return {"loss": loss, "perplexity": float(math.exp(min(loss, 50.0))), "tokens": int(count)}


def _global_batch(local_BxW: np.ndarray, shardings) -> dict:
    local = split_windows(np.asarray(local_BxW, np.int32))
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()}


def pretrain(model: nn.Module, tokens, eval_windows_ExW: np.ndarray, config: PretrainConfig, *,
             checkpoint_dir: str | None = None, log: Callable[[str], None] | None = print,
             label: str = "", stop_at_step: int | None = None) -> dict:
    """Trains `model` on random windows of `tokens` (a TokenStore or 1-D ids) and evaluates it.

    Args:
      model: a flax language model: tokens [B, L] -> logits [B, L, V].
      tokens: training tokens (the store's "train" split).
      eval_windows_ExW: fixed evaluation windows [E, L + 1] (see `window_source.eval_windows`).
      config: the run.
      checkpoint_dir: where checkpoints go (and are resumed from) when checkpointing is on.
      log: progress sink (None: silent).
      label: prefix of progress lines.
      stop_at_step: stop after this step, checkpointed, as a preempted job would (for tests).

    Returns a dict: eval loss / perplexity, last train loss, steps, tokens, wall time, tokens/s,
    `diverged` (a non-finite loss stopped the run), `completed`, and the loss curve.
    """
    compiled = _compiled(model, config)
    state = compiled.init(config)
    shard_index, shard_count = jax.process_index(), jax.process_count()
    batches = window_source.train_batches(
        tokens, seq_len=config.seq_len, global_batch=config.global_batch,
        num_steps=config.total_steps, seed=config.data_seed, shard_index=shard_index,
        shard_count=shard_count)
    tokens_per_step = config.global_batch * config.seq_len
    checkpointer = None
    start_step = 0
    if config.checkpoint_every_steps and checkpoint_dir:
        checkpointer = training.Checkpointer(checkpoint_dir)
        if checkpointer.latest_step() is not None:
            state, meta, start_step = checkpointer.restore(state)
            batches.set_state(meta["data"])
            if log:
                log(f"{label}resumed from step {start_step} ({checkpoint_dir})")
    curve: list[tuple[int, float]] = []
    evals: list[dict] = []
    pending = None  # (step, metrics) of the previous step, read while the next one runs
    diverged = False
    t0 = time.time()
    last_log_time, last_log_step = t0, start_step

    def report(step_done: int, metrics) -> bool:
        nonlocal last_log_time, last_log_step
        loss = float(metrics["loss"])
        curve.append((step_done, loss))
        if not math.isfinite(loss):
            return False
        if log:
            now = time.time()
            rate = (step_done - last_log_step) * tokens_per_step / max(now - last_log_time, 1e-9)
            eta = (config.total_steps - step_done) * tokens_per_step / max(rate, 1e-9)
            log(f"{label}step {step_done}/{config.total_steps} loss {loss:.4f} "
                f"lr {float(metrics['learning_rate']):.2e} {rate:,.0f} tok/s eta {eta:.0f}s")
            last_log_time, last_log_step = now, step_done
        return True

    step = start_step
    log_every = config.log_every_steps or max(config.total_steps // 10, 1)
    stop = config.total_steps if stop_at_step is None else min(stop_at_step, config.total_steps)
    compile_seconds = 0.0
    while step < stop:
        batch = _global_batch(next(batches), compiled.batch_shardings)
        state, metrics = compiled.train_step(state, batch)
        step += 1
        stop_signal = signals.take_up() if step < stop else None  # SIGINT / SIGTERM
        if stop_signal is not None:
            if checkpointer:
                checkpointer.save(step, state, {"step": step, "data": batches.get_state()})
                checkpointer.wait()
            raise signals.Interrupted(stop_signal, where=f"step {step}/{config.total_steps}" + (
                ", checkpoint written" if checkpointer else ""))
        if step == start_step + 1:  # the first step compiles (unless this model ran before)
            jax.block_until_ready(metrics)
            compile_seconds = time.time() - t0
        if pending is not None and (pending[0] % log_every == 0):
            if not report(*pending):
                diverged = True
                break
        pending = (step, metrics)
        if (config.eval_every_steps and step % config.eval_every_steps == 0
                and step < config.total_steps):
            evals.append({"step": step, **evaluate(compiled, state, eval_windows_ExW,
                                                   config.eval_batch)})
        if checkpointer and step % config.checkpoint_every_steps == 0:
            checkpointer.save(step, state, {"step": step, "data": batches.get_state()})
    if pending is not None and not diverged and not report(*pending):
        diverged = True
    train_seconds = time.time() - t0
    completed = step >= config.total_steps and not diverged
    if checkpointer:
        if step < config.total_steps and not diverged and step % config.checkpoint_every_steps:
            checkpointer.save(step, state, {"step": step, "data": batches.get_state()})
        checkpointer.wait()
        if completed:
            checkpointer.delete_all()
        else:
            checkpointer.close()
    final = evaluate(compiled, state, eval_windows_ExW, config.eval_batch) if not diverged else \
        {"loss": float("nan"), "perplexity": float("nan"), "tokens": 0}
    trained = (step - start_step) * tokens_per_step
    return {"eval_loss": final["loss"], "eval_perplexity": final["perplexity"],
            "eval_tokens": final["tokens"], "train_loss": curve[-1][1] if curve else float("nan"),
            "steps": step, "tokens": step * tokens_per_step, "train_seconds": train_seconds,
            "first_step_seconds": compile_seconds,
            "tokens_per_second": trained / max(train_seconds - compile_seconds, 1e-9),
            "diverged": diverged, "completed": completed, "loss_curve": curve, "evals": evals,

            "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))}

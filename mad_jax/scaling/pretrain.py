"""Language-model pretraining of one model on token windows: the inner loop of an IsoFLOP sweep.

An adapter on `mad_jax.training.loop`, the loop the MAD protocol trains with: the state is a grid
of one run created through the partitioner (`mad_jax.sharding`), stepped by the same train step
and evaluated by the same scanned program. What pretraining adds is configuration: a linear warmup
before the cosine decay (`training.warmup_cosine` with `warmup_steps`), global-norm gradient
clipping in the optimizer (`training.make_optimizer(grad_clip=)`, an optax chain), and a floor of
the schedule relative to the peak. They live in the state's `hparams` as arrays, so one compiled
step serves every budget a model is trained at.

Batches are windows [B, L + 1]: inputs are the first L tokens, targets the last L. Each host reads
its own rows (`window_source.train_batches`); `Programs.place` assembles the global batch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mad_jax import sharding
from mad_jax.models.accounting import count_params
from mad_jax.scaling import window_source
from mad_jax.training import loop
from mad_jax.training.hparam_grid import init_grid_state
from mad_jax.training.optimizer import make_optimizer, warmup_cosine  # noqa: F401 - re-exported

# Bump when what a run computes or reports changes, so a resumed sweep trains older runs again
# (2: the eval scores every window, a loss-curve point is the mean since the previous one).
PRETRAIN_VERSION = 2
# Fields that do not change what a run computes: a checkpoint stays valid when they change.
_NOT_IN_FINGERPRINT = ("log_every_steps", "checkpoint_every_steps", "eval_every_steps")


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
      weight_decay, b1, b2, eps: AdamW (decoupled decay on every parameter, as the MAD trainer).
      grad_clip: global gradient-norm clip (0 disables).
      eval_every_steps: also evaluate during training (0: only at the end).
      eval_batch: sequences per eval step.
      log_every_steps: progress lines (and loss-curve points: the mean loss since the previous
        point) every that many steps (0: ten a run).
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


def split_windows(windows_BxW) -> dict:
    """Windows [B, L + 1] -> {"inputs": [B, L], "targets": [B, L]} (next-token targets)."""
    return {"inputs": windows_BxW[:, :-1], "targets": windows_BxW[:, 1:]}


def _eval_set(eval_windows_ExW: np.ndarray, eval_batch: int) -> tuple[np.ndarray, np.ndarray]:
    if len(eval_windows_ExW) == 0:
        raise ValueError("need at least one eval window; pass windows from "
                         "window_source.eval_windows")
    windows = split_windows(np.asarray(eval_windows_ExW, np.int32))
    return loop.pad_eval_set(windows["inputs"], windows["targets"], eval_batch)


def _evaluate(programs: loop.Programs, gstate, placed_eval_set) -> dict:
    """Mean next-token loss (nats/token) and perplexity over every eval window."""
    stats = programs.evaluate_totals(gstate, placed_eval_set)
    loss = float(stats["loss_sum"][0]) / max(float(stats["count"][0]), 1.0)
    return {"loss": loss, "perplexity": float(math.exp(min(loss, 50.0))),
            "tokens": int(stats["count"][0])}


def pretrain(model: nn.Module, tokens, eval_windows_ExW: np.ndarray, config: PretrainConfig, *,
             checkpoint_dir: str | None = None, log: Callable[[str], None] | None = print,
             label: str = "", stop_at_step: int | None = None) -> dict:
    """Trains `model` on random windows of `tokens` (a TokenStore or 1-D ids) and evaluates it.

    Args:
      model: a flax language model: tokens [B, L] -> logits [B, L, V].
      tokens: training tokens (the store's "train" split).
      eval_windows_ExW: fixed evaluation windows [E, L + 1] (see `window_source.eval_windows`);
        all of them are scored.
      config: the run.
      checkpoint_dir: where checkpoints go (and are resumed from) when checkpointing is on.
      log: progress sink (None: silent).
      label: prefix of progress lines.
      stop_at_step: stop after this step, checkpointed, as a preempted job would (for tests).

    Returns a dict: eval loss / perplexity, last train loss (mean since the previous progress
    point), steps, tokens, wall time, tokens/s, `diverged` (a non-finite loss stopped the run),
    `completed`, and the loss curve.
    """
    log = log or (lambda _: None)
    t0 = time.time()
    part = loop.make_partitioner(config.mesh, group_size=1, batch_sizes={
        "global_batch": config.global_batch, "eval_batch": config.eval_batch})
    tx = make_optimizer(b1=config.b1, b2=config.b2, eps=config.eps, grad_clip=config.grad_clip)
    sample_1xL = jnp.zeros((1, config.seq_len), jnp.int32)

    def create(rng, h):  # the run's values are arguments: one compile serves every budget
        params = sharding.unbox(model.init(rng, sample_1xL)["params"])
        return init_grid_state(params, tx, [(h["learning_rate"], h["weight_decay"])],
                               total_steps=h["total_steps"], rng=jax.random.key_data(rng),
                               warmup_steps=h["warmup_steps"],
                               min_learning_rate=h["min_learning_rate"])

    hparams = {"learning_rate": jnp.float32(config.learning_rate),
               "weight_decay": jnp.float32(config.weight_decay),
               "total_steps": jnp.int32(config.total_steps),
               "warmup_steps": jnp.int32(config.warmup_steps),
               "min_learning_rate": jnp.float32(config.learning_rate
                                                * config.min_learning_rate_ratio)}
    fresh, state_sh = loop.create_state(part, create, jax.random.key(config.seed), hparams,
                                        params_specs=lambda: sharding.param_specs(model, sample_1xL),
                                        key=("pretrain", model, tx, config.seq_len))
    fingerprint = {k: v for k, v in dataclasses.asdict(config).items()
                   if k not in _NOT_IN_FINGERPRINT}
    fingerprint["model"] = hashlib.sha1(repr(model).encode()).hexdigest()[:16]
    ckpt, gstate, meta = loop.open_checkpoint(
        checkpoint_dir if config.checkpoint_every_steps else None, fingerprint, fresh, log)
    start = int(meta["step"]) if meta else 0
    batches = window_source.train_batches(
        tokens, seq_len=config.seq_len, global_batch=config.global_batch,
        num_steps=config.total_steps, seed=config.data_seed)
    if meta:
        batches.set_state(meta["data"])
        log(f"{label}resumed from step {start} ({checkpoint_dir})")
    eval_set = _eval_set(eval_windows_ExW, config.eval_batch)
    t_compile = time.time()
    programs = loop.compile_programs(model, tx, part, gstate, state_sh,
                                     batch_shape=(config.global_batch, config.seq_len),
                                     eval_shape=eval_set[0].shape, vmapped=False)
    compile_seconds = time.time() - t_compile
    placed_eval = programs.place_eval_set(eval_set)
    tokens_per_step = config.global_batch * config.seq_len
    log_every = config.log_every_steps or max(config.total_steps // 10, 1)
    stop = config.total_steps if stop_at_step is None else min(stop_at_step, config.total_steps)
    curve: list[tuple[int, float]] = []
    evals: list[dict] = []
    progress = {"time": time.time(), "step": start, "diverged": False}

    def on_boundary(step: int, gstate, means: dict):
        loss = float(means["loss"][0])
        curve.append((step, loss))
        if not bool(loop.host_value(gstate.active)[0]):  # the step froze a non-finite run
            progress["diverged"] = True
            return gstate
        if step % log_every == 0 or step == stop:
            now = time.time()
            rate = (step - progress["step"]) * tokens_per_step / max(now - progress["time"], 1e-9)
            eta = (config.total_steps - step) * tokens_per_step / max(rate, 1e-9)
            log(f"{label}step {step}/{config.total_steps} loss {loss:.4f} "
                f"lr {float(means['learning_rate'][0]):.2e} {rate:,.0f} tok/s eta {eta:.0f}s")
            progress.update(time=now, step=step)
        if config.eval_every_steps and step % config.eval_every_steps == 0 \
                and step < config.total_steps:
            evals.append({"step": step, **_evaluate(programs, gstate, placed_eval)})
        return gstate

    checkpointing = None if ckpt is None else loop.Checkpointing(
        ckpt, config.checkpoint_every_steps,
        lambda step: {"step": step, "data": batches.get_state(), "fingerprint": fingerprint})
    placed = (programs.place(split_windows(rows), global_batch=config.global_batch)
              for rows in batches)
    gstate, step = loop.train_loop(
        gstate, programs, placed, start=start, total=stop,
        is_boundary=lambda s: (s % log_every == 0 or s == stop or bool(
            config.eval_every_steps and s % config.eval_every_steps == 0)),
        on_boundary=on_boundary, keep_going=lambda: not progress["diverged"],
        checkpointing=checkpointing)
    diverged = progress["diverged"]
    train_seconds = time.time() - t0
    completed = step >= config.total_steps and not diverged
    if ckpt:
        if step < config.total_steps and not diverged and step % config.checkpoint_every_steps:
            checkpointing.save(step, gstate)
        ckpt.wait()
        if completed:
            ckpt.delete_all()
        else:
            ckpt.close()
    final = _evaluate(programs, gstate, placed_eval) if not diverged else \
        {"loss": float("nan"), "perplexity": float("nan"), "tokens": 0}
    trained = (step - start) * tokens_per_step
    return {"eval_loss": final["loss"], "eval_perplexity": final["perplexity"],
            "eval_tokens": final["tokens"], "train_loss": curve[-1][1] if curve else float("nan"),
            "steps": step, "tokens": step * tokens_per_step, "train_seconds": train_seconds,
            "first_step_seconds": compile_seconds,
            "tokens_per_second": trained / max(train_seconds - compile_seconds, 1e-9),
            "diverged": diverged, "completed": completed, "loss_curve": curve, "evals": evals,
            "params": count_params(gstate.runs.params)}

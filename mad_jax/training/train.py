"""The training loop: one setting, one run or a vmapped grid of runs, resumable from checkpoints.

`fit` trains a model on arrays; `train` loads a task setting through `mad_jax.tasks` and calls it.
The loop dispatches step N+1 before reading step N's metrics only at log points (metrics are
accumulated on device), evaluates the whole test set in one scanned program, stops runs whose loss
turns non-finite (recorded as failed, the others go on) or whose test accuracy reaches
`stop_accuracy`, and checkpoints state + history so a killed run resumes to the same result.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mad_jax.training import losses
from mad_jax.training.checkpoints import CheckpointError, Checkpointer
from mad_jax.training import model_check, signals
from mad_jax.training.config import TrainConfig, to_steps
from mad_jax.training.hparam_grid import (GridState, init_grid_state, make_grid_evaluate,
                                          make_grid_eval_step, make_grid_train_step)
from mad_jax.training.metrics_writer import MetricsWriter
from mad_jax.training.optimizer import make_optimizer
from mad_jax.training.steps import init_params, make_eval_step, make_train_step

BatchFn = Callable[[int], Iterator[Mapping[str, np.ndarray]]]
# Fields that do not change what a run computes (a checkpoint stays valid when they change).
# The mesh is not either: a checkpoint restores onto any mesh.
_NOT_IN_FINGERPRINT = ("log_every_steps", "tensorboard", "keep_checkpoints", "vmap",
                       "checkpoint_every_steps", "checkpoint_every_epochs",
                       "checkpoint_every_examples", "mesh", "sharding_rules", "dcn_mesh")


def run_name(learning_rate: float, weight_decay: float, seed: int | None = None) -> str:
    """Folder name of one run of a grid, e.g. "lr=0.001,wd=0.1" (",seed=1" on a seed axis)."""
    name = f"lr={learning_rate:g},wd={weight_decay:g}"
    return name if seed is None else f"{name},seed={seed}"


def count_params(params) -> int:
    """Number of scalars in a parameter pytree (boxed or plain)."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def default_batch_fn(inputs: np.ndarray, targets: np.ndarray, *, batch_size: int,
                     seed: int) -> BatchFn:
    """Shuffled, endlessly repeated batches from mad_jax.tasks' resumable pipeline."""
    from mad_jax import tasks

    def batch_fn(start_step: int):
        return iter(tasks.batches(inputs, targets, batch_size=batch_size, seed=seed, shuffle=True,
                                  num_epochs=None, start_step=start_step, drop_remainder=True))
    return batch_fn


def _pad_test_set(inputs: np.ndarray, targets: np.ndarray, batch_size: int):
    """[N, L] -> [Nb, B, L]; padding rows have targets -100, so they are never scored."""
    n, length = inputs.shape
    nb = max(1, math.ceil(n / batch_size))
    pad = nb * batch_size - n
    inputs = np.concatenate([inputs, np.zeros((pad, length), inputs.dtype)])
    targets = np.concatenate([targets, np.full((pad, length), -100, targets.dtype)])
    return (jnp.asarray(inputs.reshape(nb, batch_size, length), jnp.int32),
            jnp.asarray(targets.reshape(nb, batch_size, length), jnp.int32))


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(str(a.shape).encode())
    return h.hexdigest()[:16]


def _new_history() -> dict:
    # eval_curve / val_curve rows: [step, macro accuracy, loss, micro accuracy]
    return {"loss_curve": [], "eval_curve": [], "val_curve": [], "best_test_acc": None,
            "best_step": None}


def _eval_summary(stats: Mapping[str, np.ndarray]) -> dict:
    """Summed eval stats of R runs -> {"accuracy" (macro), "accuracy_micro", "loss"}, each [R]."""
    count = np.maximum(stats["count"], 1.0)
    return {"accuracy": np.asarray(losses.macro_accuracy(
                stats["class_hits"], stats["class_targets"], stats["class_predictions"])),
            "accuracy_micro": stats["correct"] / count, "loss": stats["loss_sum"] / count}


def fit(model, train_data: tuple[np.ndarray, np.ndarray], test_data: tuple[np.ndarray, np.ndarray],
        config: TrainConfig | Mapping[str, Any] | None = None, *,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None, out_dir: str | None = None,
        batch_fn: BatchFn | None = None, on_log: Callable[[dict], None] | None = None,
        log: Callable[[str], None] = print) -> list[dict]:
    """Trains `model` once per (lr, wd, seed) of `config.seeded_runs`; one result dict per run.

    train_data / test_data / validation_data: (inputs int32[N, L], targets int32[N, L] with
      -100 = not scored). validation_data, if given, is evaluated beside the test set (it must
      have the test set's shape); `config.select_on="validation"` needs it and then early
      stopping reads its accuracy instead of the test set's.
    out_dir: if given, per-run metrics (`<out_dir>/<run_name>/metrics.jsonl` + TensorBoard events)
      and checkpoints (`<out_dir>/checkpoints`) are written there, and an interrupted call
      resumes from the last checkpoint.
    batch_fn(start_step) -> iterator of {"inputs", "targets"} batches from that step on; default:
      `mad_jax.tasks.batches` (shuffled with config.seed; every seed of the seed axis sees them).
    on_log(info): called at every log point with progress (step, total_steps, losses, accuracies).
    Accuracies are macro (the reference's metric, `losses.macro_accuracy`) unless named micro.
    """
    cfg = TrainConfig.from_any(config)
    train_x, train_y = (np.asarray(a) for a in train_data)
    test_x, test_y = (np.asarray(a) for a in test_data)
    if cfg.select_on == "validation" and validation_data is None:
        raise ValueError("select_on='validation' needs validation_data (mad_jax.tasks split "
                         "'validation'); or use select_on='test'")
    if validation_data is not None:
        val_x, val_y = (np.asarray(a) for a in validation_data)
        if val_x.shape != test_x.shape:
            raise ValueError(f"validation data {val_x.shape} must have the test set's shape "
                             f"{test_x.shape}")
    n_train, bs = len(train_x), cfg.batch_size
    if bs > n_train:
        raise ValueError(f"batch_size {bs} exceeds the {n_train} training examples; use a "
                         "smaller batch_size or more examples")
    # A model scoring fewer classes than the data's tokens would train on NaN losses.
    classes = int(max(train_x.max(initial=0), train_y.max(initial=0), test_y.max(initial=0))) + 1
    model_check.check_model(model, arch=getattr(model, "name", None) or type(model).__name__,
                            task="this task", vocab_size=classes, inputs=train_x[:1])
    total = to_steps(cfg, "train", num_train_examples=n_train, batch_size=bs)
    if total is None:
        raise ValueError("no training budget: set train_steps, train_epochs or train_examples")
    eval_every = to_steps(cfg, "eval_every", num_train_examples=n_train, batch_size=bs) or total
    ckpt_every = (to_steps(cfg, "checkpoint_every", num_train_examples=n_train, batch_size=bs)
                  if out_dir else None)
    decay_every = max(1, n_train // bs) if cfg.schedule == "per-epoch" else 1
    batch_fn = batch_fn or default_batch_fn(train_x, train_y, batch_size=bs, seed=cfg.seed)

    tx = make_optimizer(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    sample = jnp.asarray(train_x[:1], jnp.int32)
    inits = {}  # seed -> (initial params, state rng data)
    for seed in cfg.run_seeds:
        init_rng, state_rng = jax.random.split(jax.random.key(seed))
        inits[seed] = (init_params(model, init_rng, sample), jax.random.key_data(state_rng))
    n_params = count_params(inits[cfg.run_seeds[0]][0])
    runs = cfg.seeded_runs
    part = make_partitioner(cfg, group_size=len(runs) if cfg.vmap else 1)
    eval_bs = cfg.eval_batch_size or bs
    eval_sets = {"test": _pad_test_set(test_x, test_y, eval_bs)}
    if validation_data is not None:
        eval_sets["validation"] = _pad_test_set(val_x, val_y, eval_bs)
    fingerprint = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    fingerprint.update(total_steps=total, n_params=n_params,
                       model=hashlib.sha1(repr(model).encode()).hexdigest()[:16],
                       data=_digest(train_x, train_y, test_x, test_y,
                                    *(eval_sets["validation"] if validation_data is not None
                                      else ())))
    fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists, as stored in JSON

    seed_axis = cfg.seeds is not None  # run names carry their seed
    if cfg.vmap or len(runs) == 1:
        groups, vmapped = [list(range(len(runs)))], cfg.vmap
    else:
        groups, vmapped = [[i] for i in range(len(runs))], False
    results: list[dict] = [{} for _ in runs]
    for group in groups:
        group_runs = [runs[i] for i in group]
        ckpt_dir = None
        if out_dir:
            ckpt_dir = os.path.join(out_dir, "checkpoints")
            if len(groups) > 1:
                lr, wd, seed = group_runs[0]
                ckpt_dir = os.path.join(ckpt_dir, run_name(lr, wd, seed if seed_axis else None))
        group_seeds = {seed for _, _, seed in group_runs}
        if len(group_seeds) == 1:  # one seed: every run starts from the same parameters
            params, rng = inits[group_seeds.pop()]
            stacked = False
        else:
            params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs),
                                            *[inits[seed][0] for _, _, seed in group_runs])
            rng = jnp.stack([inits[seed][1] for _, _, seed in group_runs])
            stacked = True
        group_results = _fit_group(
            group_runs, vmapped=vmapped, model=model, params=params, stacked=stacked, tx=tx,
            rng=rng, eval_sets=eval_sets, batch_fn=batch_fn, cfg=cfg, total=total,
            eval_every=eval_every, decay_every=decay_every, ckpt_every=ckpt_every,
            ckpt_dir=ckpt_dir, out_dir=out_dir, fingerprint=fingerprint, on_log=on_log, log=log,
            sample_shape=(bs, train_x.shape[1]), part=part, seed_axis=seed_axis)
        for i, res in zip(group, group_results):
            res["params"] = n_params
            results[i] = res
    return results


def make_partitioner(cfg: TrainConfig, *, group_size: int):
    """The `mad_jax.sharding.Partitioner` of `cfg.mesh`, or None to train on one device.

    group_size: runs trained together (the vmapped grid); the mesh's `sweep` axis must divide it.
    "auto" puts as many runs side by side as divide both the runs and the devices, and uses the
    remaining devices data parallel.
    """
    if not cfg.mesh:
        return None
    from mad_jax import sharding

    mesh = sharding.sweep_mesh(group_size) if cfg.mesh == "auto" else cfg.mesh
    part = sharding.Partitioner.create(mesh, rules=cfg.sharding_rules or None,
                                       dcn_mesh=cfg.dcn_mesh or None)
    sweep = part.mesh.shape["sweep"]
    if group_size % sweep:
        raise ValueError(f"mesh {cfg.mesh!r}: its sweep axis ({sweep}) does not divide the "
                         f"{group_size} runs trained together; use mesh='auto' or "
                         f"'{sharding.sweep_mesh(group_size)}'")
    for name, size in (("batch_size", cfg.batch_size),
                       ("eval_batch_size", cfg.eval_batch_size or cfg.batch_size)):
        examples = part.mesh.shape["data"] * part.mesh.shape["fsdp"]
        if size % examples:
            raise ValueError(f"{name} {size} does not divide over the mesh's data x fsdp axes "
                             f"({examples} devices); use a multiple of {examples}")
    return part


def _host(x) -> np.ndarray:
    """A (possibly multi-host, sharded) array as one numpy array on every process."""
    if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _place(x, sharding):
    """A host value (identical on every process) as a global array in `sharding`."""
    if sharding is None:
        return jnp.asarray(x)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


# Compiled grid programs, reused across fit() calls: equal Flax modules (they hash by their fields)
# with equal shapes, optimizer constants and grid size share one executable. The schedule length
# and the hyperparameters are state arrays, so they are not part of the key.
_PROGRAMS: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
_MAX_PROGRAMS = 16


def _compiled(key: tuple, build: Callable[[], Any]):
    try:
        hash(key)
    except TypeError:  # a model with unhashable fields: no reuse
        return build()
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]
    value = _PROGRAMS[key] = build()
    if len(_PROGRAMS) > _MAX_PROGRAMS:
        _PROGRAMS.popitem(last=False)
    return value


def compile_grid_programs(model, tx, gstate: GridState, batch_spec, test_batches, *,
                          vmapped: bool, min_learning_rate: float, tx_key: tuple,
                          precision: str = "float32", part=None, shardings=None):
    """(train program, evaluate program), jitted and compiled for these shapes.

    tx_key identifies the optimizer (its constant hyperparameters) for reuse across calls.
    precision: "float32" or "bfloat16" (`precision.py`), for training and evaluation alike.
    The train program donates the grid state. With a `mad_jax.sharding.Partitioner` `part`,
    both run on its mesh: `shardings` = (grid state, train batch, test batches) shardings in,
    the state's shardings out, metrics replicated.
    """
    def build():
        train_step = make_train_step(model, tx, min_learning_rate=min_learning_rate,
                                     precision=precision)
        eval_step = make_eval_step(model, precision=precision)
        grid_train = make_grid_train_step(train_step, vmapped=vmapped)
        grid_evaluate = make_grid_evaluate(make_grid_eval_step(eval_step, vmapped=vmapped))
        if part is None:
            train_c = jax.jit(grid_train, donate_argnums=0).lower(gstate, batch_spec).compile()
            evaluate_c = jax.jit(grid_evaluate).lower(gstate, *test_batches).compile()
            return train_c, evaluate_c
        state_sh, batch_sh, test_sh = shardings
        train_c = part.train_step(grid_train, state_sh, batch_sh).lower(
            gstate, batch_spec).compile()
        evaluate_c = part.jit(grid_evaluate, (state_sh, *test_sh), part.replicated()).lower(
            gstate, *test_batches).compile()
        return train_c, evaluate_c

    shapes = jax.tree_util.tree_map(lambda x: (x.shape, str(x.dtype)),
                                    (batch_spec, test_batches))
    from mad_jax.layers.registry import registry_generation

    key = (registry_generation(), model, tx_key, min_learning_rate, precision, vmapped, gstate.size,
           jax.tree_util.tree_structure(gstate), str(jax.tree_util.tree_leaves(shapes)),
           None if part is None else (part.mesh, part.rules))
    return _compiled(key, build)


def _fit_group(grid: Sequence[tuple[float, float, int]], *, vmapped: bool, model, params,
               stacked: bool, tx, rng, eval_sets: dict, batch_fn: BatchFn, cfg: TrainConfig,
               total: int, eval_every: int, decay_every: int, ckpt_every: int | None,
               ckpt_dir: str | None, out_dir: str | None, fingerprint: dict, on_log, log,
               sample_shape, part=None, seed_axis: bool = False) -> list[dict]:
    r = len(grid)
    state_sh = batch_sh = test_sh = None
    if part is None:
        gstate = init_grid_state(params, tx, grid, total_steps=total, rng=rng,
                                 decay_every_steps=decay_every, stacked=stacked)
    else:  # the grid state is created in its shardings (runs over the sweep axis)
        from mad_jax import sharding

        def create_grid(params, rng):
            return init_grid_state(sharding.unbox(params), tx, grid, total_steps=total, rng=rng,
                                   decay_every_steps=decay_every, stacked=stacked)

        specs = sharding.param_specs(model, jnp.zeros((1, sample_shape[1]), jnp.int32))
        sharded_create, state_sh = part.init_fn(create_grid, params, rng, params_specs=specs,
                                                sweep=True)
        gstate = sharded_create(params, rng)
        batch_sh = part.batch_shardings(
            {k: jax.ShapeDtypeStruct(sample_shape, jnp.int32) for k in ("inputs", "targets")})
        test_sh = part.batch_shardings(eval_sets["test"], leading=1)
        eval_sets = {name: part.shard_batch(batches, test_sh)
                     for name, batches in eval_sets.items()}
    fingerprint = dict(fingerprint, runs=[list(g) for g in grid], vmapped=vmapped)
    meta = {"step": 0, "elapsed_s": 0.0, "fingerprint": fingerprint,
            "runs": [_new_history() for _ in range(r)]}
    ckpt = Checkpointer(ckpt_dir) if ckpt_dir else None
    resumed = False
    if ckpt is not None and ckpt.latest_step() is not None:
        try:
            if ckpt.read_meta().get("fingerprint") != fingerprint:
                log(f"note: checkpoint in {ckpt_dir} was made with another config; starting over")
                ckpt.delete_all()
                ckpt = Checkpointer(ckpt_dir)
            else:
                gstate, meta, _ = ckpt.restore(gstate)
                resumed = True
        except CheckpointError as e:
            log(f"warning: {e}; starting this run over")
            ckpt.delete_all()
            ckpt = Checkpointer(ckpt_dir)
    start = int(meta["step"])
    if resumed:
        log(f"resuming from step {start}/{total} ({ckpt_dir})")
    names = [run_name(lr, wd, seed if seed_axis else None) for lr, wd, seed in grid]
    main_process = jax.process_index() == 0  # only process 0 writes metrics
    writers = ([MetricsWriter(os.path.join(out_dir, n), resume_step=start if resumed else None,
                              tensorboard=cfg.tensorboard) for n in names]
               if out_dir and main_process else [])

    t0 = time.perf_counter()
    batch_spec = {k: jax.ShapeDtypeStruct(sample_shape, jnp.int32) for k in ("inputs", "targets")}
    train_c, evaluate_c = compile_grid_programs(model, tx, gstate, batch_spec, eval_sets["test"],
                                                vmapped=vmapped,
                                                min_learning_rate=cfg.min_learning_rate,
                                                tx_key=("adamw", cfg.b1, cfg.b2, cfg.eps),
                                                precision=cfg.precision,
                                                part=part, shardings=(state_sh, batch_sh, test_sh))
    compile_s = time.perf_counter() - t0

    hist = meta["runs"]
    step, accum, n_accum = start, None, 0
    active = _host(gstate.active)
    t_loop, elapsed0 = time.perf_counter(), float(meta["elapsed_s"])
    batches = batch_fn(start)
    try:
        while step < total and active.any():
            batch = next(batches)
            batch = {k: _place(np.asarray(batch[k], np.int32), None if batch_sh is None
                               else batch_sh[k]) for k in ("inputs", "targets")}
            was_active = active
            gstate, metrics = train_c(gstate, batch)
            step += 1
            accum = metrics if accum is None else jax.tree_util.tree_map(jnp.add, accum, metrics)
            n_accum += 1
            # SIGINT / SIGTERM (signals.graceful_stop): checkpoint here, then stop.
            stop_signal = signals.take_up() if step < total else None
            do_eval = step % eval_every == 0 or step == total
            # Checkpoint steps are log steps too, so no partial average is lost across a restart.
            do_ckpt = ckpt is not None and step < total and (
                (bool(ckpt_every) and step % ckpt_every == 0) or stop_signal is not None)
            if not (do_eval or do_ckpt or step % cfg.log_every_steps == 0
                    or stop_signal is not None):
                continue
            means = {k: np.asarray(v) / n_accum for k, v in jax.device_get(accum).items()}
            accum, n_accum = None, 0
            active = _host(gstate.active)
            for i in range(r):
                if was_active[i] and active[i]:
                    hist[i]["loss_curve"].append([step, float(means["loss"][i])])
                    if writers:
                        writers[i].write(step, {f"train/{k}": v[i] for k, v in means.items()})
            evals = None
            if do_eval:
                evals = {name: _eval_summary(jax.device_get(evaluate_c(gstate, *batches_)))
                         for name, batches_ in eval_sets.items()}
                reached = np.zeros(r, bool)
                for i in range(r):
                    if not active[i]:
                        continue
                    h = hist[i]
                    for name, curve in (("test", "eval_curve"), ("validation", "val_curve")):
                        if name not in evals:
                            continue
                        e = evals[name]
                        row = [step, float(e["accuracy"][i]), float(e["loss"][i]),
                               float(e["accuracy_micro"][i])]
                        h.setdefault(curve, []).append(row)
                        if writers:
                            writers[i].write(step, {f"{name}/accuracy": row[1],
                                                    f"{name}/loss": row[2],
                                                    f"{name}/accuracy_micro": row[3]})
                    acc = float(evals["test"]["accuracy"][i])
                    if h["best_test_acc"] is None or acc > h["best_test_acc"]:
                        h["best_test_acc"], h["best_step"] = acc, step
                    stop_on = float(evals[cfg.select_on]["accuracy"][i])
                    reached[i] = cfg.stop_accuracy is not None and stop_on >= cfg.stop_accuracy
                if reached.any():
                    stop_step = np.where(reached, step, _host(gstate.stop_step))
                    gstate = gstate.replace(
                        active=_place(active & ~reached,
                                      None if part is None else state_sh.active),
                        stop_step=_place(stop_step.astype(np.int32),
                                         None if part is None else state_sh.stop_step))
                    active = active & ~reached
            elapsed = elapsed0 + time.perf_counter() - t_loop
            if on_log is not None:
                on_log({"step": step, "total_steps": total, "grid": [list(g) for g in grid],
                        "active": active.tolist(), "train_loss": means["loss"].tolist(),
                        "test_accuracy": (None if evals is None
                                          else evals["test"]["accuracy"].tolist()),
                        "best_test_accuracy": [h["best_test_acc"] for h in hist],
                        "elapsed_s": elapsed, "steps_per_s": (step - start) / max(
                            time.perf_counter() - t_loop, 1e-9)})
            if do_ckpt:
                for w in writers:  # metrics on disk cover at least what the checkpoint covers
                    w.flush()
                meta = {"step": step, "elapsed_s": elapsed, "fingerprint": fingerprint,
                        "runs": hist}
                ckpt.save(step, gstate, meta)
            if stop_signal is not None:
                if ckpt is not None:
                    ckpt.wait()
                raise signals.Interrupted(stop_signal, where=f"step {step}/{total}"
                                          + ("" if ckpt is None else ", checkpoint written"))
        wall = elapsed0 + time.perf_counter() - t_loop
    finally:
        for w in writers:
            w.close()
        if ckpt is not None:
            ckpt.wait()

    stop_step = _host(gstate.stop_step)
    nonfinite = _host(gstate.nonfinite)
    nan = float("nan")
    results = []
    for i, (lr, wd, seed) in enumerate(grid):
        h = hist[i]
        failed = bool(nonfinite[i])
        final = h["eval_curve"][-1] if h["eval_curve"] and not failed else [None, nan, nan, nan]
        val = h.get("val_curve") or []
        final_val = ([None] * 4 if "validation" not in eval_sets  # not evaluated: empty cells
                     else val[-1] if val and not failed else [None, nan, nan, nan])
        results.append({
            "learning_rate": lr, "weight_decay": wd, "seed": seed,
            "run": run_name(lr, wd, seed if seed_axis else None),
            "status": "failed" if failed else "ok",
            "error": f"non-finite loss at step {int(stop_step[i])}" if failed else "",
            "final_test_acc": final[1], "final_test_acc_micro": final[3],
            "best_test_acc": (nan if failed or h["best_test_acc"] is None
                              else h["best_test_acc"]),
            "best_step": h["best_step"],
            "test_loss": final[2],
            "final_val_acc": final_val[1], "final_val_acc_micro": final_val[3],
            "final_train_loss": h["loss_curve"][-1][1] if h["loss_curve"] else nan,
            "steps": int(stop_step[i]) if stop_step[i] >= 0 else step,
            "total_steps": total,
            "wall_time_s": wall, "compile_time_s": compile_s, "grid_size": r,
            "loss_curve": h["loss_curve"], "eval_curve": h["eval_curve"],
            "val_curve": val,
        })
    if ckpt is not None:
        if cfg.keep_checkpoints:  # the final state too, for users who want the trained params
            if ckpt.latest_step() != step:
                ckpt.save(step, gstate, {"step": step, "elapsed_s": wall,
                                         "fingerprint": fingerprint, "runs": hist})
            ckpt.close()
        else:
            ckpt.delete_all()
            parent = os.path.dirname(ckpt_dir)
            if os.path.basename(parent) == "checkpoints" and not os.listdir(parent):
                os.rmdir(parent)  # runs trained one after another had one folder each
    return results


def split_task_setting(task_setting) -> tuple[str, dict]:
    """(task, setting) from {"task": ..., **setting} or a (task, setting) pair."""
    if isinstance(task_setting, Mapping):
        setting = dict(task_setting)
        if "task" not in setting:
            raise ValueError("task_setting needs a 'task' key, e.g. "
                             "{'task': 'in-context-recall', **mad_jax.tasks.settings(task)[0]}")
        return setting.pop("task"), setting
    task, setting = task_setting
    return task, dict(setting)


def load_task_data(task: str, setting: Mapping[str, Any], cfg: TrainConfig, *,
                   cache_dir: str | None = None):
    """(train, test, validation) arrays of one task setting, capped by
    cfg.max_{train,test}_examples; validation (the held-out split, as large as the test set) is
    loaded only for cfg.select_on == "validation", else None."""
    from mad_jax import tasks

    if task not in tasks.TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(tasks.TASKS)}")
    setting = dict(setting)
    if cfg.max_train_examples:
        setting["num_train_examples"] = min(setting["num_train_examples"], cfg.max_train_examples)
    if cfg.max_test_examples:
        setting["num_test_examples"] = min(setting["num_test_examples"], cfg.max_test_examples)
    train_data = tasks.load(task, setting, "train", seed=cfg.data_seed, cache_dir=cache_dir)
    test_data = tasks.load(task, setting, "test", seed=cfg.data_seed, cache_dir=cache_dir)
    validation_data = None
    if cfg.select_on == "validation":
        validation_data = tasks.load(task, setting, "validation", seed=cfg.data_seed,
                                     cache_dir=cache_dir)
    return train_data, test_data, validation_data


def model_max_length(setting: Mapping[str, Any], inputs: np.ndarray) -> int:
    """The max_length a task setting's model is built with: the setting's seq_len, as the
    reference passes it (inputs are often one token shorter), or the input length if longer."""
    return max(int(setting.get("seq_len", 0)), int(np.shape(inputs)[1]))


def train(model_fn: Callable, task_setting, train_config: TrainConfig | Mapping | None = None, *,
          out_dir: str | None = None, cache_dir: str | None = None,
          on_log: Callable[[dict], None] | None = None,
          log: Callable[[str], None] = print) -> dict:
    """Trains `model_fn(task, vocab_size, max_length)` on one task setting.

    task_setting: {"task": name, **setting} (a setting from `mad_jax.tasks.settings(task)`) or a
      (task, setting) pair. train_config: TrainConfig or a mapping of its fields.
    max_length is the setting's seq_len (`model_max_length`), as the reference passes it.
    Returns the run's result dict (final_test_acc (macro), final_test_acc_micro, best_test_acc,
    test_loss, loss_curve, eval_curve, steps, wall_time_s, compile_time_s, params, status). With
    `train_config["grid"]` or `["seeds"]`, all runs train together and the dict is
    {"runs": [one dict per run], "best_test_acc": ..., "final_test_acc": ...} (best over runs).
    """
    cfg = TrainConfig.from_any(train_config)
    task, setting = split_task_setting(task_setting)
    train_data, test_data, validation_data = load_task_data(task, setting, cfg,
                                                            cache_dir=cache_dir)
    model = model_fn(task, int(setting["vocab_size"]), model_max_length(setting, train_data[0]))
    results = fit(model, train_data, test_data, cfg, validation_data=validation_data,
                  out_dir=out_dir, on_log=on_log, log=log)
    if cfg.grid is None and cfg.seeds is None:
        return results[0]
    ok = [r for r in results if r["status"] == "ok"]
    return {"runs": results,
            "final_test_acc": max((r["final_test_acc"] for r in ok), default=float("nan")),
            "best_test_acc": max((r["best_test_acc"] for r in ok), default=float("nan"))}

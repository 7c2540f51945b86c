"""MAD training: one task setting, one run or a vmapped grid of runs, resumable from checkpoints.

`fit` trains a model on arrays; `train` loads a task setting through `mad_jax.tasks` and calls it.
Both are an adapter on `loop.train_loop`: the (lr, wd, seed) runs of a setting are one grid state
stepped by one program; at each boundary the whole test set is evaluated in one scanned program,
runs whose test accuracy reaches `stop_accuracy` stop (a run whose loss turns non-finite is
frozen by the step itself and recorded as failed; the others go on), and state + history are
checkpointed so a killed run resumes to the same result.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mad_jax import sharding, storage
from mad_jax.models.accounting import count_params
from mad_jax.training import loop, losses, model_check
from mad_jax.training.checkpoints import Checkpointer, local_checkpoint_dir
from mad_jax.training.config import NOT_IDENTITY, TrainConfig, to_steps
from mad_jax.training.hparam_grid import GridState, init_grid_state
from mad_jax.training.metrics_writer import MetricsWriter
from mad_jax.training.optimizer import make_optimizer
from mad_jax.training.steps import init_params

BatchFn = Callable[[int], Iterator[Mapping[str, np.ndarray]]]


def run_name(learning_rate: float, weight_decay: float, seed: int | None = None) -> str:
    """Folder name of one run of a grid, e.g. "lr=0.001,wd=0.1" (",seed=1" on a seed axis)."""
    name = f"lr={learning_rate:g},wd={weight_decay:g}"
    return name if seed is None else f"{name},seed={seed}"


def default_batch_fn(inputs: np.ndarray, targets: np.ndarray, *, batch_size: int,
                     seed: int) -> BatchFn:
    """Shuffled, endlessly repeated batches from mad_jax.tasks' resumable pipeline."""
    from mad_jax import tasks

    def batch_fn(start_step: int):
        return iter(tasks.batches(inputs, targets, batch_size=batch_size, seed=seed, shuffle=True,
                                  num_epochs=None, start_step=start_step, drop_remainder=True))
    return batch_fn


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


@dataclasses.dataclass(frozen=True)
class _Data:
    """One setting's arrays and the step counts its runs train by."""

    train: tuple[np.ndarray, np.ndarray]
    eval_sets: dict              # name -> (inputs [Nb, B, L], targets [Nb, B, L])
    total: int
    eval_every: int
    ckpt_every: int | None
    decay_every: int
    batch_fn: BatchFn
    digest: str


def _plan_data(model, cfg: TrainConfig, train_data, test_data, validation_data, *,
               batch_fn: BatchFn | None, checkpoints: bool) -> _Data:
    """Checks one setting's arrays against the config and the model; its step counts."""
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
    eval_bs = cfg.eval_batch_size or bs
    eval_sets = {"test": loop.pad_eval_set(test_x, test_y, eval_bs)}
    if validation_data is not None:
        eval_sets["validation"] = loop.pad_eval_set(val_x, val_y, eval_bs)
    return _Data(
        train=(train_x, train_y), eval_sets=eval_sets, total=total,
        eval_every=to_steps(cfg, "eval_every", num_train_examples=n_train, batch_size=bs) or total,
        ckpt_every=(to_steps(cfg, "checkpoint_every", num_train_examples=n_train, batch_size=bs)
                    if checkpoints else None),
        decay_every=max(1, n_train // bs) if cfg.schedule == "per-epoch" else 1,
        batch_fn=batch_fn or default_batch_fn(train_x, train_y, batch_size=bs, seed=cfg.seed),
        digest=_digest(train_x, train_y, test_x, test_y,
                       *(eval_sets["validation"] if validation_data is not None else ())))


def _initial_params(model, cfg: TrainConfig, sample_1xL) -> tuple[dict, float]:
    """(seed -> (initial parameters, state rng data) for every seed the runs use, the seconds
    it took: compiling the init, mostly)."""
    t0 = time.perf_counter()
    inits = {}
    for seed in cfg.run_seeds:
        init_rng, state_rng = jax.random.split(jax.random.key(seed))
        inits[seed] = (init_params(model, init_rng, sample_1xL), jax.random.key_data(state_rng))
    return inits, time.perf_counter() - t0


def _fingerprint(model, cfg: TrainConfig, n_params: int, data: Sequence[_Data]) -> dict:
    record = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IDENTITY}
    record.update(total_steps=data[0].total, n_params=n_params,
                  model=hashlib.sha1(repr(model).encode()).hexdigest()[:16], data=data[0].digest)
    if len(data) > 1:  # a packed group: every setting's budget and arrays
        record.update(total_steps=[d.total for d in data], data=[d.digest for d in data])
    return json.loads(json.dumps(record))  # tuples -> lists, as stored in JSON


def _create_grid(part, tx, params, rng, stacked: bool, runs, *, totals, decay_every,
                 min_learning_rate: float, model, params_specs):
    """(grid state, shardings) of `runs` ((lr, wd, seed) each) created through the partitioner;
    the run values are arguments, so one compiled create serves every setting of a shape."""
    def create(params, rng, lrs, wds, totals, decay_every):
        return init_grid_state(sharding.unbox(params), tx, list(zip(lrs, wds)),
                               total_steps=totals, rng=rng, decay_every_steps=decay_every,
                               min_learning_rate=min_learning_rate, stacked=stacked)

    as_array = lambda values, dtype: jnp.asarray(values, dtype)  # noqa: E731
    return loop.create_state(
        part, create, params, rng, as_array([r[0] for r in runs], jnp.float32),
        as_array([r[1] for r in runs], jnp.float32), as_array(totals, jnp.int32),
        as_array(decay_every, jnp.int32), params_specs=params_specs,
        key=("mad-grid", model, tx, stacked, float(min_learning_rate)))


def _start_state(group_runs, inits):
    """(params, rng, stacked): shared by the runs (one seed) or stacked per run (a seed axis)."""
    seeds = {seed for *_, seed in group_runs}
    if len(seeds) == 1:  # every run starts from the same parameters
        params, rng = inits[seeds.pop()]
        return params, rng, False
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *[inits[s][0] for *_, s in group_runs])
    return params, jnp.stack([inits[s][1] for *_, s in group_runs]), True


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
    data = _plan_data(model, cfg, train_data, test_data, validation_data, batch_fn=batch_fn,
                      checkpoints=bool(out_dir))
    tx = make_optimizer(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    sample = jnp.asarray(data.train[0][:1], jnp.int32)
    inits, init_s = _initial_params(model, cfg, sample)
    n_params = count_params(inits[cfg.run_seeds[0]][0])
    runs = cfg.seeded_runs
    part = make_partitioner(cfg, group_size=len(runs) if cfg.vmap else 1)
    fingerprint = _fingerprint(model, cfg, n_params, [data])
    specs = functools.partial(sharding.param_specs, model, sample)  # traced only if needed
    seed_axis = cfg.seeds is not None  # run names carry their seed
    if cfg.vmap or len(runs) == 1:
        groups, vmapped = [list(range(len(runs)))], cfg.vmap
    else:
        groups, vmapped = [[i] for i in range(len(runs))], False
    results: list[dict] = [{} for _ in runs]
    for group in groups:
        group_runs = [runs[i] for i in group]
        names = _run_names(group_runs, seed_axis)
        ckpt_dir = None
        if out_dir:
            ckpt_dir = local_checkpoint_dir(storage.join(out_dir, "checkpoints"))
            if len(groups) > 1:
                ckpt_dir = os.path.join(ckpt_dir, names[0])
        create = functools.partial(
            _create_grid, part, tx, *_start_state(group_runs, inits), group_runs,
            totals=[data.total] * len(group), decay_every=[data.decay_every] * len(group),
            min_learning_rate=cfg.min_learning_rate, model=model, params_specs=specs)
        group_results = _train_group(
            group_runs, create,
            model, tx, part, eval_sets=data.eval_sets, batch_fn=data.batch_fn, cfg=cfg,
            totals=np.full(len(group), data.total), eval_every=np.full(len(group), data.eval_every),
            ckpt_every=data.ckpt_every, ckpt_dir=ckpt_dir, out_dir=out_dir, names=names,
            fingerprint=fingerprint, on_log=on_log, log=log,
            sample_shape=(cfg.batch_size, data.train[0].shape[1]), vmapped=vmapped,
            packed=False, seed_axis=seed_axis, init_s=init_s if group is groups[0] else 0.0)
        for i, res in zip(group, group_results):
            res["params"] = n_params
            results[i] = res
    return results


def fit_packed(model, datasets: Sequence[Mapping[str, Any]],
               config: TrainConfig | Mapping[str, Any] | None = None, *,
               out_dir: str | None = None, setting_names: Sequence[str] | None = None,
               on_log: Callable[[dict], None] | None = None,
               log: Callable[[str], None] = print) -> list[list[dict]]:
    """The runs of several task settings trained in one program; per setting, what `fit` gives.

    datasets: one mapping per setting with "train" and "test" (and "validation" when
      `config.select_on == "validation"`) arrays, as `fit` takes them. Every setting's batches and
      eval sets must share their shapes (the training-set-size variants of a task share the
      baseline's); training sets may differ in size. Every run keeps what it would have alone:
      its own data order (the setting's shuffled batches), its schedule over its own epochs, its
      evaluation points, early stop and NaN freeze. Only `config.vmap=True` packs.
    out_dir: checkpoints (`<out_dir>/checkpoints/<first setting name>`) and per-run metrics
      (`<out_dir>/<setting name>/<run_name>/`; names `setting_names`, default setting_<i>),
      resumed like `fit`'s (the loss-curve point spanning a restart covers the steps after it).
    Returns one list of result dicts per setting, in `config.seeded_runs` order.
    """
    cfg = TrainConfig.from_any(config)
    if not datasets:
        raise ValueError("fit_packed needs at least one dataset")
    if not cfg.vmap:
        raise ValueError("packing trains runs side by side in one program: it needs vmap=True")
    data = [_plan_data(model, cfg, d["train"], d["test"], d.get("validation"), batch_fn=None,
                       checkpoints=bool(out_dir)) for d in datasets]
    shapes = {(d.train[0].shape[1],) + tuple((k, v[0].shape) for k, v in d.eval_sets.items())
              for d in data}
    if len(shapes) > 1:
        raise ValueError(f"packed settings must share their sequence length and eval-set shapes; "
                         f"got {sorted(map(str, shapes))}: pack only settings of equal shapes")
    tx = make_optimizer(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    sample = jnp.asarray(data[0].train[0][:1], jnp.int32)
    inits, init_s = _initial_params(model, cfg, sample)
    n_params = count_params(inits[cfg.run_seeds[0]][0])
    runs = [(d, lr, wd, seed) for d in range(len(data)) for lr, wd, seed in cfg.seeded_runs]
    owner = np.array([d for d, *_ in runs])  # run -> its setting
    part = make_partitioner(cfg, group_size=len(runs))
    seed_axis = cfg.seeds is not None
    folders = list(setting_names or [f"setting_{d}" for d in range(len(data))])
    names = [storage.join(folders[d], name) for d, name in
             zip(owner, _run_names([r[1:] for r in runs], seed_axis))]
    create = functools.partial(
        _create_grid, part, tx, *_start_state(runs, inits), [r[1:] for r in runs],
        totals=[data[d].total for d in owner], decay_every=[data[d].decay_every for d in owner],
        min_learning_rate=cfg.min_learning_rate, model=model,
        params_specs=functools.partial(sharding.param_specs, model, sample))

    def batch_fn(start: int):  # each run's batch from its own setting's stream: [R, B, L]
        streams = [d.batch_fn(start) for d in data]
        for batches in zip(*streams):
            yield {k: np.stack([np.asarray(batches[d][k]) for d in owner])
                   for k in ("inputs", "targets")}

    eval_sets = {name: tuple(np.stack([data[d].eval_sets[name][j] for d in owner], axis=1)
                             for j in (0, 1)) for name in data[0].eval_sets}
    out = _train_group(
        [r[1:] for r in runs], create,
        model, tx, part, eval_sets=eval_sets, batch_fn=batch_fn, cfg=cfg,
        totals=np.array([data[d].total for d in owner]),
        eval_every=np.array([data[d].eval_every for d in owner]),
        ckpt_every=min((d.ckpt_every for d in data if d.ckpt_every), default=None),
        # One folder per pack (named by its first setting): packs of one task never share one.
        ckpt_dir=(local_checkpoint_dir(storage.join(out_dir, "checkpoints", folders[0]))
                  if out_dir else None),
        out_dir=out_dir, names=names, fingerprint=_fingerprint(model, cfg, n_params, data),
        on_log=on_log, log=log,
        sample_shape=(len(runs), cfg.batch_size, data[0].train[0].shape[1]), vmapped=True,
        packed=True, seed_axis=seed_axis, init_s=init_s)
    per_setting: list[list[dict]] = [[] for _ in data]
    for d, res in zip(owner, out):
        res["params"] = n_params
        per_setting[d].append(res)
    return per_setting


def make_partitioner(cfg: TrainConfig, *, group_size: int):
    """The partitioner a MAD grid of `group_size` runs trains on (`loop.make_partitioner` over
    `cfg.mesh`, its rules and DCN mesh); checks the batch sizes divide over the mesh."""
    return loop.make_partitioner(
        cfg.mesh, group_size=group_size, rules=cfg.sharding_rules, dcn_mesh=cfg.dcn_mesh,
        batch_sizes={"batch_size": cfg.batch_size,
                     "eval_batch_size": cfg.eval_batch_size or cfg.batch_size})


def _run_names(grid, seed_axis: bool) -> list[str]:
    return [run_name(lr, wd, seed if seed_axis else None) for lr, wd, seed in grid]


class _Bookkeeping:
    """One group's histories, metric files and early stopping, read at the loop's boundaries.

    totals, eval_every: per run (equal unless the group is packed). A packed group's runs have
    their own boundaries (log, eval and end points); between two of a run's own boundaries its
    summed metrics are kept here, so each run's curve reads as if it had trained alone.
    """

    def __init__(self, grid, cfg: TrainConfig, programs: loop.Programs, eval_sets: dict, *,
                 meta: dict, start: int, totals: np.ndarray, eval_every: np.ndarray,
                 packed: bool, writers: list, on_log):
        self.grid, self.cfg, self.programs, self.eval_sets = grid, cfg, programs, eval_sets
        self.hist, self.start, self.totals, self.eval_every = meta["runs"], start, totals, eval_every
        self.total, self.packed = int(totals.max()), packed
        self.writers, self.on_log, self.fingerprint = writers, on_log, meta["fingerprint"]
        self.elapsed0, self.t_loop = float(meta["elapsed_s"]), time.perf_counter()
        self.active = None
        self.last_step, self.sums, self.steps = start, None, np.zeros(len(grid))

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t_loop

    def is_boundary(self, step: int) -> bool:
        return bool(step % self.cfg.log_every_steps == 0
                    or np.any((step % self.eval_every == 0) | (step == self.totals)))

    def _train_means(self, step: int, means: dict) -> tuple[dict, np.ndarray]:
        """(metric -> [R] means over each run's interval, bool[R]: a point of run i's curve)."""
        if not self.packed:  # every boundary is every run's
            return means, np.ones(len(self.grid), bool)
        count = step - self.last_step
        self.last_step = step
        sums = {k: v * count for k, v in means.items() if k != "stepped"}
        self.sums = sums if self.sums is None else {k: self.sums[k] + sums[k] for k in sums}
        self.steps = self.steps + means["stepped"] * count
        own = ((step % self.cfg.log_every_steps == 0) | (step % self.eval_every == 0)
               | (step == self.totals))
        out = {k: v / np.maximum(self.steps, 1.0) for k, v in self.sums.items()}
        for v in self.sums.values():
            v[own] = 0.0
        self.steps[own] = 0.0
        return out, own

    def on_boundary(self, step: int, gstate: GridState, means: dict) -> GridState:
        was_active, self.active = self.active, loop.host_value(gstate.active)
        train, own = self._train_means(step, means)
        for i, h in enumerate(self.hist):
            if was_active[i] and self.active[i] and own[i]:
                h["loss_curve"].append([step, float(train["loss"][i])])
                if self.writers:
                    self.writers[i].write(step, {f"train/{k}": v[i] for k, v in train.items()})
        evals = None
        due = (step % self.eval_every == 0) | (step == self.totals)
        if due.any():
            evals = {name: _eval_summary(self.programs.evaluate_totals(gstate, placed))
                     for name, placed in self.eval_sets.items()}
            reached = np.array([self.active[i] and due[i] and self._record_eval(i, step, evals)
                                for i in range(len(self.hist))], bool)
            if reached.any():
                self.active = self.active & ~reached
                stop_step = np.where(reached, step, loop.host_value(gstate.stop_step))
                sh = self.programs.state_shardings
                shard = self.programs.partitioner.shard_batch
                gstate = gstate.replace(active=shard(self.active, sh.active),
                                        stop_step=shard(stop_step.astype(np.int32), sh.stop_step))
        if self.on_log is not None:
            self.on_log({"step": step, "total_steps": self.total,
                         "grid": [list(g) for g in self.grid], "active": self.active.tolist(),
                         "train_loss": means["loss"].tolist(),
                         "test_accuracy": None if evals is None else evals["test"]["accuracy"].tolist(),
                         "best_test_accuracy": [h["best_test_acc"] for h in self.hist],
                         "elapsed_s": self.elapsed(), "steps_per_s": (step - self.start) / max(
                             time.perf_counter() - self.t_loop, 1e-9)})
        return gstate

    def _record_eval(self, i: int, step: int, evals: dict) -> bool:
        """Adds run i's eval rows; True when it reached the stopping accuracy."""
        h = self.hist[i]
        for name, curve in (("test", "eval_curve"), ("validation", "val_curve")):
            if name in evals:
                e = evals[name]
                row = [step, float(e["accuracy"][i]), float(e["loss"][i]),
                       float(e["accuracy_micro"][i])]
                h.setdefault(curve, []).append(row)
                if self.writers:
                    self.writers[i].write(step, {f"{name}/accuracy": row[1],
                                                 f"{name}/loss": row[2],
                                                 f"{name}/accuracy_micro": row[3]})
        acc = float(evals["test"]["accuracy"][i])
        if h["best_test_acc"] is None or acc > h["best_test_acc"]:
            h["best_test_acc"], h["best_step"] = acc, step
        stop_on = float(evals[self.cfg.select_on]["accuracy"][i])
        return self.cfg.stop_accuracy is not None and stop_on >= self.cfg.stop_accuracy

    def meta(self, step: int) -> dict:
        for w in self.writers:  # metrics on disk cover at least what the checkpoint covers
            w.flush()
        return {"step": step, "elapsed_s": self.elapsed(), "fingerprint": self.fingerprint,
                "runs": self.hist}


def _train_group(grid, create, model, tx, part, *, eval_sets: dict, batch_fn: BatchFn,
                 cfg: TrainConfig, totals: np.ndarray, eval_every: np.ndarray,
                 ckpt_every: int | None, ckpt_dir: str | None, out_dir: str | None,
                 names: list[str], fingerprint: dict, on_log, log, sample_shape, vmapped: bool,
                 packed: bool, seed_axis: bool, init_s: float = 0.0) -> list[dict]:
    """Trains one group of runs (vmapped together, packed, or one run) through the loop.

    init_s: seconds the initial parameters took (their compile, mostly); the group's compile
    time counts them with its create, train and eval programs."""
    t0 = time.perf_counter()
    fresh, state_sh = create()
    create_s = time.perf_counter() - t0
    fingerprint = dict(fingerprint, runs=[list(g) for g in grid], vmapped=vmapped)
    ckpt, gstate, meta = loop.open_checkpoint(ckpt_dir, fingerprint, fresh, log)
    resumed = meta is not None
    meta = meta or {"step": 0, "elapsed_s": 0.0, "runs": [_new_history() for _ in grid]}
    meta["fingerprint"] = fingerprint
    start = int(meta["step"])
    if resumed:
        log(f"resuming from step {start}/{int(totals.max())} ({ckpt_dir})")
    t0 = time.perf_counter()
    programs = loop.compile_programs(model, tx, part, gstate, state_sh,
                                     batch_shape=sample_shape,
                                     eval_shape=eval_sets["test"][0].shape, vmapped=vmapped,
                                     precision=cfg.precision, packed=packed)
    compile_s = init_s + create_s + time.perf_counter() - t0
    if compile_s >= 1.0:  # reused programs (same model and shapes) come back at once
        log(f"compiled in {compile_s:.1f}s")
    placed = {name: programs.place_eval_set(s) for name, s in eval_sets.items()}
    writers = ([MetricsWriter(storage.join(out_dir, n), resume_step=start if resumed else None,
                              tensorboard=cfg.tensorboard) for n in names]
               if out_dir and sharding.is_main_process() else [])
    book = _Bookkeeping(grid, cfg, programs, placed, meta=meta, start=start, totals=totals,
                        eval_every=eval_every, packed=packed, writers=writers, on_log=on_log)
    book.active = loop.host_value(gstate.active)
    checkpointing = None if ckpt is None else loop.Checkpointing(ckpt, ckpt_every, book.meta)
    batches = (programs.place(b) for b in batch_fn(start))
    try:
        gstate, step = loop.train_loop(
            gstate, programs, batches, start=start, total=book.total,
            is_boundary=book.is_boundary, on_boundary=book.on_boundary, keep_going=lambda: bool(book.active.any()),
            checkpointing=checkpointing)
        wall = book.elapsed()
    finally:
        for w in writers:
            w.close()
        if ckpt is not None:
            ckpt.wait()
    results = _results(grid, book.hist, gstate, step=step, totals=totals, wall=wall,
                       compile_s=compile_s, seed_axis=seed_axis,
                       validation="validation" in eval_sets)
    if ckpt is not None:
        _finish_checkpoints(ckpt, checkpointing, gstate, step, ckpt_dir, keep=cfg.keep_checkpoints)
    return results


def _results(grid, hist, gstate: GridState, *, step: int, totals: np.ndarray, wall: float,
             compile_s: float, seed_axis: bool, validation: bool) -> list[dict]:
    """One result dict per run of a finished group."""
    stop_step = loop.host_value(gstate.stop_step)
    nonfinite = loop.host_value(gstate.nonfinite)
    nan = float("nan")
    results = []
    for i, (lr, wd, seed) in enumerate(grid):
        h = hist[i]
        failed = bool(nonfinite[i])
        final = h["eval_curve"][-1] if h["eval_curve"] and not failed else [None, nan, nan, nan]
        val = h.get("val_curve") or []
        final_val = ([None] * 4 if not validation  # not evaluated: empty cells
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
            "total_steps": int(totals[i]),
            "wall_time_s": wall, "compile_time_s": compile_s, "grid_size": len(grid),
            "loss_curve": h["loss_curve"], "eval_curve": h["eval_curve"],
            "val_curve": val,
        })
    return results


def _finish_checkpoints(ckpt: Checkpointer, checkpointing, gstate, step: int, ckpt_dir: str, *,
                        keep: bool) -> None:
    """Keeps the final state (keep_checkpoints) or removes the group's checkpoints."""
    if keep:  # the final state too, for users who want the trained params
        if ckpt.latest_step() != step:
            checkpointing.save(step, gstate)
        ckpt.close()
        return
    ckpt.delete_all()
    parent = os.path.dirname(ckpt_dir)
    if os.path.basename(parent) == "checkpoints" and not os.listdir(parent):
        os.rmdir(parent)  # runs trained one after another had one folder each


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

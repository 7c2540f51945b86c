"""The one training loop: a grid state on a mesh, a compiled step, an eval program, and hooks.

Both trainers are thin adapters on it: the MAD grid (`train.fit`: the (lr, wd, seed) runs of one
task setting, vmapped) and pretraining (`scaling.pretrain`: one run, warmup and gradient clipping
in the optimizer). What they share lives here, once:

- the partitioner: every state is created through `mad_jax.sharding.Partitioner` on a mesh; one
  device is a 1x1 mesh (`make_partitioner`);
- the compiled programs (`compile_programs`): the train step (grid state donated) and the scanned
  evaluation of a whole padded eval set, cached across calls for equal models, optimizers, shapes
  and meshes;
- batch placement (`Programs.place`) and evaluation (`Programs.evaluate_totals`);
- checkpoints (`open_checkpoint`, `Checkpointing`);
- the loop (`train_loop`): metrics are summed on device and read only at boundaries (log, eval,
  checkpoint, signal), where `on_boundary` runs; a SIGINT / SIGTERM taken up inside
  `signals.graceful_stop` checkpoints and raises `signals.Interrupted`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
import threading
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mad_jax.tasks.registry import IGNORE_INDEX
from mad_jax.training import signals
from mad_jax.training.checkpoints import CheckpointError, Checkpointer
from mad_jax.training.hparam_grid import (GridState, make_grid_evaluate, make_grid_eval_step,
                                          make_grid_train_step)
from mad_jax.training.steps import make_eval_step, make_train_step

# Bump when the layout of a checkpointed grid state changes: older checkpoints then restart.
STATE_FORMAT = 2
_MAX_PROGRAMS = 32  # per cache; a search over 8 devices holds each program once per device
# The caches are shared by threads that train on different devices (search.parallel): the lock
# guards their lookups and inserts, never a compile.
_CACHE_LOCK = threading.Lock()
_PROGRAMS: "collections.OrderedDict[tuple, Programs]" = collections.OrderedDict()
_CREATORS: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()


def make_partitioner(mesh: str, *, group_size: int, batch_sizes: Mapping[str, int],
                     rules: str = "", dcn_mesh: str = ""):
    """The `mad_jax.sharding.Partitioner` every state is created through.

    mesh: "" trains on one device: a 1x1 mesh over the default device when one is set
      (`with jax.default_device(d):`, thread-local, so each thread may train on its own), else
      over this process's first device (the mesh names its device, so compiled programs are
      cached per device); "auto" puts as many runs side by side as divide both the runs and
      the devices and uses the remaining devices data parallel; or axis sizes ("sweep:2,data:4").
    group_size: runs trained together (the vmapped grid); the mesh's `sweep` axis must divide it.
    batch_sizes: name -> size of every batch the runs see; each must divide over data x fsdp.
    """
    from mad_jax import sharding

    if not mesh:
        device = jax.config.jax_default_device
        if device is None or isinstance(device, str):  # None or a platform name ("cpu")
            device = jax.local_devices(backend=device)[0]
        return sharding.Partitioner.create("data:1", rules=rules or None, devices=[device])
    spec = sharding.sweep_mesh(group_size) if mesh == "auto" else mesh
    part = sharding.Partitioner.create(spec, rules=rules or None, dcn_mesh=dcn_mesh or None)
    sweep = part.mesh.shape["sweep"]
    if group_size % sweep:
        raise ValueError(f"mesh {mesh!r}: its sweep axis ({sweep}) does not divide the "
                         f"{group_size} runs trained together; use mesh='auto' or "
                         f"'{sharding.sweep_mesh(group_size)}'")
    examples = part.mesh.shape["data"] * part.mesh.shape["fsdp"]
    for name, size in batch_sizes.items():
        if size % examples:
            raise ValueError(f"{name} {size} does not divide over the mesh's data x fsdp axes "
                             f"({examples} devices); use a multiple of {examples}")
    return part


def create_state(part, create_fn: Callable, *args, params_specs,
                 key: Any = None) -> tuple[GridState, Any]:
    """(grid state, its shardings): `create_fn(*args) -> GridState` run under jit with every
    array created in its sharding (runs over the mesh's sweep axis).

    params_specs: the parameters' logical specs (`sharding.param_specs`), or a function giving
      them, called only when the create has to be compiled (it traces the model).
    key: everything `create_fn` computes from besides its arguments (hashable: the model, the
    optimizer, static flags). With a key, the sharded create is compiled once per key, mesh and
    argument shapes, and reused by later calls (a sweep's settings, a ladder's budgets).
    """
    def compile_create():
        specs = params_specs() if callable(params_specs) else params_specs
        return part.init_fn(create_fn, *args, params_specs=specs, sweep=True)

    if key is None:
        sharded_create, shardings = compile_create()
        return sharded_create(*args), shardings
    full_key = (key, part.mesh, part.rules, jax.tree.structure(args),
                tuple((np.shape(x), str(x.dtype)) for x in jax.tree.leaves(args)))
    with _CACHE_LOCK:
        cached = _CREATORS.get(full_key)
    if cached is None:
        cached = compile_create()
        with _CACHE_LOCK:
            _CREATORS[full_key] = cached
            if len(_CREATORS) > _MAX_PROGRAMS:
                _CREATORS.popitem(last=False)
    sharded_create, shardings = cached
    return sharded_create(*args), shardings


def pad_eval_set(inputs_NxL: np.ndarray, targets_NxL: np.ndarray,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, L] -> [Nb, B, L] for the scanned evaluation; padding rows are never scored."""
    n, length = inputs_NxL.shape
    nb = max(1, math.ceil(n / batch_size))
    pad = nb * batch_size - n
    inputs = np.concatenate([inputs_NxL, np.zeros((pad, length), inputs_NxL.dtype)])
    targets = np.concatenate([targets_NxL, np.full((pad, length), IGNORE_INDEX,
                                                   targets_NxL.dtype)])
    return (inputs.reshape(nb, batch_size, length).astype(np.int32),
            targets.reshape(nb, batch_size, length).astype(np.int32))


def host_value(x) -> np.ndarray:
    """A (possibly multi-host, sharded) array as one numpy array on every process."""
    if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@dataclasses.dataclass(frozen=True)
class Programs:
    """The compiled train step and evaluation of one model shape on one mesh."""

    partitioner: Any
    state_shardings: Any
    batch_shardings: dict
    eval_shardings: tuple
    train: Callable      # (grid state, batch) -> (grid state, metrics[R]); donates the state
    evaluate: Callable   # (grid state, inputs [Nb, B, L], targets [Nb, B, L]) -> summed stats[R]

    def place(self, batch: Mapping[str, np.ndarray], *, global_batch: int | None = None) -> dict:
        """A host batch {"inputs", "targets"} as global arrays in the train step's shardings.
        global_batch=None: every host holds the whole batch; N: this host's rows of N."""
        batch = {k: np.asarray(batch[k], np.int32) for k in ("inputs", "targets")}
        return self.partitioner.shard_batch(batch, self.batch_shardings, global_batch=global_batch)

    def place_eval_set(self, eval_set: tuple[np.ndarray, np.ndarray]) -> tuple:
        return tuple(self.partitioner.shard_batch(x, s)
                     for x, s in zip(eval_set, self.eval_shardings))

    def evaluate_totals(self, gstate: GridState, placed_eval_set: tuple) -> dict:
        """Summed eval stats per run (numpy [R] / [R, V]) over a placed eval set."""
        return jax.device_get(self.evaluate(gstate, *placed_eval_set))


def compile_programs(model, tx, part, gstate: GridState, state_shardings, *, batch_shape,
                     eval_shape, vmapped: bool, precision: str = "float32",
                     packed: bool = False) -> Programs:
    """Compiles (or reuses) the train and evaluate programs of these shapes on `part`'s mesh.

    batch_shape: (B, L) of a train batch; eval_shape: (Nb, B, L) of a padded eval set. packed:
    every run has its own batches and eval set (`hparam_grid.make_grid_train_step`): then
    batch_shape is (R, B, L) and eval_shape (Nb, R, B, L).
    Equal flax modules (they hash by their fields, resolved layer classes included), optimizers,
    shapes and meshes share one executable; the schedule and the hyperparameters are state
    arrays, so they are not part of the key.
    """
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), gstate)
    key = (model, tx, precision, vmapped, packed, part.mesh, part.rules,
           jax.tree.structure(abstract),
           tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(abstract)),
           tuple(batch_shape), tuple(eval_shape))
    try:
        hash(key)
    except TypeError:  # a model with unhashable fields: compile for this call only
        key = None
    if key is not None:
        with _CACHE_LOCK:
            cached = _PROGRAMS.get(key)
            if cached is not None:
                _PROGRAMS.move_to_end(key)
                return cached

    batch = {k: jax.ShapeDtypeStruct(tuple(batch_shape), jnp.int32) for k in ("inputs", "targets")}
    eval_set = (jax.ShapeDtypeStruct(tuple(eval_shape), jnp.int32),) * 2
    if packed:  # runs over the sweep axis, each run's examples over the data axes
        batch_sh = part.batch_shardings(batch, sweep=True)
        eval_sh = tuple(NamedSharding(part.mesh, P(None, *batch_sh["inputs"].spec))
                        for _ in eval_set)
    else:
        batch_sh = part.batch_shardings(batch)
        eval_sh = tuple(part.batch_shardings(x, leading=1) for x in eval_set)
    grid_train = make_grid_train_step(make_train_step(model, tx, precision=precision),
                                      vmapped=vmapped, packed=packed)
    grid_evaluate = make_grid_evaluate(make_grid_eval_step(
        make_eval_step(model, precision=precision), vmapped=vmapped, packed=packed))
    train = part.train_step(grid_train, state_shardings, batch_sh).lower(abstract, batch).compile()
    evaluate = part.jit(grid_evaluate, (state_shardings, *eval_sh), part.replicated()).lower(
        abstract, *eval_set).compile()
    programs = Programs(part, state_shardings, batch_sh, eval_sh, train, evaluate)
    if key is not None:
        with _CACHE_LOCK:
            _PROGRAMS[key] = programs
            if len(_PROGRAMS) > _MAX_PROGRAMS:
                _PROGRAMS.popitem(last=False)
    return programs


def open_checkpoint(directory: str | None, fingerprint: dict, like_state: GridState,
                    log: Callable[[str], None]) -> tuple[Checkpointer | None, GridState, dict | None]:
    """(checkpointer, state, meta): the state and JSON record restored from `directory` when its
    latest checkpoint was made with this `fingerprint`, else a fresh start (meta None) saying why.
    """
    if not directory:
        return None, like_state, None
    ckpt = Checkpointer(directory)
    if ckpt.latest_step() is None:
        return ckpt, like_state, None
    fingerprint = dict(fingerprint, state_format=STATE_FORMAT)
    try:
        stored = ckpt.read_meta().get("fingerprint") or {}
        if stored.get("state_format") != STATE_FORMAT:
            log(f"note: checkpoint in {directory} was written by an older mad_jax (another state "
                "layout); this run restarts from step 0")
        elif stored != fingerprint:
            log(f"note: checkpoint in {directory} was made with another config; starting over")
        else:
            state, meta, _ = ckpt.restore(like_state)
            return ckpt, state, meta
    except CheckpointError as e:
        log(f"warning: {e}; starting this run over")
    ckpt.delete_all()
    return Checkpointer(directory), like_state, None


@dataclasses.dataclass
class Checkpointing:
    """When and what to checkpoint: every `every` steps (None: only on a signal), with the JSON
    record `meta(step)` (its fingerprint gets the state format added)."""

    checkpointer: Checkpointer
    every: int | None
    meta: Callable[[int], dict]

    def save(self, step: int, gstate: GridState) -> None:
        record = self.meta(step)
        record["fingerprint"] = dict(record.get("fingerprint") or {}, state_format=STATE_FORMAT)
        self.checkpointer.save(step, gstate, record)


def train_loop(gstate: GridState, programs: Programs, batches: Iterator[dict], *, start: int,
               total: int, is_boundary: Callable[[int], bool],
               on_boundary: Callable[[int, GridState, dict], GridState],
               keep_going: Callable[[], bool] = lambda: True,
               checkpointing: Checkpointing | None = None) -> tuple[GridState, int]:
    """Steps `gstate` from `start` to `total` (or until `keep_going()` is false) on placed batches.

    At every boundary (`is_boundary(step)`, a checkpoint step, a stop signal) the metrics summed
    since the last one are read back as means (numpy [R]) and `on_boundary(step, gstate, means)`
    returns the state to go on with (it logs, evaluates, marks runs stopped). Checkpoint steps
    are boundaries too, so no partial average is lost across a restart. Returns (state, step).
    """
    # The step's metrics stay on the device until a boundary reads them all back in one
    # transfer: an eager add per metric per step would cost more than a tiny model's step.
    step, pending = start, []
    while step < total and keep_going():
        gstate, metrics = programs.train(gstate, next(batches))
        step += 1
        pending.append(metrics)
        stop_signal = signals.take_up() if step < total else None
        save_now = checkpointing is not None and step < total and (
            stop_signal is not None
            or bool(checkpointing.every) and step % checkpointing.every == 0)
        if not (save_now or stop_signal is not None or is_boundary(step)):
            continue
        fetched = jax.device_get(pending)
        means = {k: functools.reduce(np.add, [np.asarray(m[k]) for m in fetched]) / len(fetched)
                 for k in fetched[0]}
        pending = []
        gstate = on_boundary(step, gstate, means)
        if save_now:
            checkpointing.save(step, gstate)
        if stop_signal is not None:
            if checkpointing is not None:
                checkpointing.checkpointer.wait()
            raise signals.Interrupted(stop_signal, where=f"step {step}/{total}" + (
                "" if checkpointing is None else ", checkpoint written"))
    return gstate, step

"""Logical partition specs for whole train states, NamedShardings, sharded init and sharded steps.

The flow (nanodo / MaxText style):
  `jax.eval_shape(create_state)` -> logical PartitionSpecs per leaf -> `NamedSharding`s on the mesh
  -> `jax.jit(create_state, out_shardings=...)`, so no parameter is ever materialised unsharded;
  then the trainer's pure steps run under `jax.jit` with the same shardings in and out and the
  state donated.

Logical specs of a state come from the parameters' `nn.LogicallyPartitioned` boxes. Optimizer
states hold subtrees shaped like the parameters (Adam's mu and nu): such subtrees take the
parameters' specs, so optimizer state is sharded exactly like the parameters it tracks. Every other
leaf (step, rng, hyperparameters, Adam's count) is replicated.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mad_jax import xla_cpu_flags
from mad_jax.sharding.mesh import make_mesh
from mad_jax.sharding.rules import DEFAULT_RULES, Rules, make_rules, mesh_spec

BATCH_AXES = ("batch", "length")


def _is_spec(x) -> bool:
    return isinstance(x, P) or x is None


def _is_box(x) -> bool:
    return isinstance(x, meta.AxisMetadata)


def _shape(x) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def param_specs(model: nn.Module, *example_args, rngs=None, **example_kwargs):
    """Logical PartitionSpecs of `model`'s unboxed "params", from an abstract `model.init`."""
    rngs = jax.random.key(0) if rngs is None else rngs
    abstract = jax.eval_shape(lambda: model.init(rngs, *example_args, **example_kwargs))
    return logical_specs(abstract["params"])


def logical_specs(tree, params_specs=None):
    """One logical PartitionSpec per array leaf of `tree` (concrete or abstract), boxes unboxed.

    Boxed leaves (`nn.with_logical_partitioning`) give their own names. When `params_specs` is
    given, every subtree with the parameters' tree structure whose leaves have at least the
    named ranks (the params themselves, Adam's mu and nu) takes those specs. Everything else is
    replicated: P().
    """
    params_def = params_ranks = None
    if params_specs is not None:
        params_def = jax.tree.structure(params_specs, is_leaf=_is_spec)
        params_ranks = [len(s or ()) for s in jax.tree.leaves(params_specs, is_leaf=_is_spec)]

    def like_params(x) -> bool:
        if params_def is None or _is_box(x) or jax.tree.structure(x) != params_def:
            return False
        return all(r <= len(_shape(leaf)) for r, leaf in zip(params_ranks, jax.tree.leaves(x)))

    def spec(x):
        if _is_box(x):
            return x.get_partition_spec()
        if like_params(x):
            return params_specs
        return P()

    return jax.tree.map(spec, tree, is_leaf=lambda x: _is_box(x) or like_params(x))


def add_axis(specs, name: str | None = "sweep"):
    """Prepends a logical axis (default "sweep", the vmapped run axis) to every spec."""
    return jax.tree.map(lambda s: P(name, *(s or ())), specs, is_leaf=_is_spec)


def unbox(tree):
    """The tree with every logical-partitioning box replaced by its value."""
    return meta.unbox(tree)


@dataclasses.dataclass(frozen=True)
class Partitioner:
    """A mesh and a rules table: everything the trainer needs to shard states, batches and steps.

    Build with `Partitioner.create("data:4,fsdp:2")`. Methods take and return plain pytrees; the
    trainer's steps stay pure functions of (state, batch) and never see the mesh.
    """

    mesh: Mesh
    rules: Rules = DEFAULT_RULES

    @classmethod
    def create(cls, mesh: str | Mapping[str, int] | None = "data:-1", *,
               rules: Mapping[str, Any] | Sequence[tuple[str, Any]] | str | None = None,
               dcn_mesh: str | Mapping[str, int] | None = None,
               devices: Sequence[jax.Device] | None = None) -> "Partitioner":
        """From config values: mesh axis sizes ("data:-1,fsdp:1,tensor:1"), rule overrides."""
        return cls(make_mesh(mesh, dcn_mesh=dcn_mesh, devices=devices), make_rules(rules))

    @contextlib.contextmanager
    def activate(self):
        """Mesh and rules in context, so the model's logical constraints bind while tracing.

        Inside, flax's `nn.DenseGeneral` with a boxed kernel of more than two logical axes fails
        (google/flax#3676); layers use `mad_jax.layers.dense.DenseGeneral` instead.
        """
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    # --- shardings --------------------------------------------------------------------------

    def shardings(self, abstract_tree, specs):
        """NamedSharding per leaf of `abstract_tree` from its logical `specs` (same structure).

        Mesh axes that do not divide a dimension are dropped for that dimension (see `mesh_spec`).
        """
        spec_leaves = jax.tree.leaves(specs, is_leaf=_is_spec)
        leaves, treedef = jax.tree.flatten(abstract_tree)
        if len(spec_leaves) != len(leaves):
            raise ValueError(f"specs have {len(spec_leaves)} leaves, the tree has {len(leaves)}")
        return treedef.unflatten([
            NamedSharding(self.mesh, mesh_spec(s, _shape(x), self.mesh, self.rules))
            for s, x in zip(spec_leaves, leaves)])

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def state_shardings(self, create_fn: Callable, *args, params_specs=None, sweep: bool = False):
        """(abstract state, shardings) of `create_fn(*args)` without running it.

        `create_fn` builds one run's state (boxed or unboxed parameters); with `sweep=True` it
        builds the stacked states of a vmapped grid (leading axis = runs), which is sharded over
        the `sweep` mesh axis and otherwise like one run's state.
        """
        abstract = jax.eval_shape(create_fn, *args)
        specs = logical_specs(abstract, params_specs)
        if sweep:
            runs = {x.shape[0] if x.shape else None for x in jax.tree.leaves(unbox(abstract))}
            sweep_size = self.mesh.shape["sweep"]
            if len(runs) != 1 or None in runs or next(iter(runs)) % sweep_size:
                raise ValueError(f"a sweep state needs one leading run axis on every leaf, "
                                 f"divisible by the sweep mesh axis ({sweep_size}); "
                                 f"got leading sizes {runs}")
            specs = add_axis(specs, "sweep")
        abstract = unbox(abstract)
        return abstract, self.shardings(abstract, specs)

    def batch_shardings(self, batch, sweep: bool = False, leading: int = 0):
        """Shardings of a batch pytree of [B, L, ...] arrays: examples over (data, fsdp).

        `leading` unsharded axes come first (e.g. 1 for a stacked test set [Nb, B, L] that a
        scan walks through); with `sweep=True` the batch carries a run axis [R, B, L, ...] instead.
        Raises ValueError when the mesh's data axes do not divide the batch.
        """
        def one(x):
            shape = _shape(x)
            lead = ("sweep",) if sweep else (None,) * leading
            names = lead + BATCH_AXES[:len(shape) - len(lead)]
            spec = mesh_spec(names, shape, self.mesh, self.rules)
            wanted = tuple(nn.logical_to_mesh_axes(names, self.rules))
            if tuple(spec) != wanted[:len(spec)] or any(wanted[len(spec):]):
                raise ValueError(f"batch shape {tuple(shape)} does not divide over mesh axes "
                                 f"{wanted} of sizes {dict(self.mesh.shape)}")
            return NamedSharding(self.mesh, spec)
        return jax.tree.map(one, batch)

    # --- sharded init and steps -------------------------------------------------------------

    def init_fn(self, create_fn: Callable, *example_args, params_specs=None, sweep: bool = False):
        """(sharded_create, shardings): `sharded_create(*args)` runs `create_fn` under jit with
        every output created in its sharding (boxes removed, so the state holds plain arrays).

        `example_args` (arrays or ShapeDtypeStructs) fix the shapes; reuse `sharded_create` for
        many runs of one shape (different seeds or hyperparameters) without recompiling.
        """
        _, shardings = self.state_shardings(create_fn, *example_args, params_specs=params_specs,
                                            sweep=sweep)
        # The out_shardings alone make XLA create every array in its sharding; no mesh context
        # is needed here (flax 0.12's nn.DenseGeneral could not take one: google/flax#3676).
        # A create runs once per state: it compiles as such (on the CPU, without LLVM
        # optimisation; mad_jax.xla_cpu_flags).
        options = xla_cpu_flags.run_once_options(self.mesh.devices.flat[0].platform)
        return jax.jit(lambda *a: unbox(create_fn(*a)), out_shardings=shardings,
                       compiler_options=options), shardings

    def init(self, create_fn: Callable, *args, params_specs=None, sweep: bool = False):
        """Runs `create_fn(*args)` once, outputs sharded from the start: (state, shardings)."""
        sharded_create, shardings = self.init_fn(create_fn, *args, params_specs=params_specs,
                                                 sweep=sweep)
        return sharded_create(*args), shardings

    def shard_batch(self, batch, shardings=None, *, global_batch: int | None = None):
        """Host batch (numpy) -> global jax.Arrays in `shardings` (default `batch_shardings`).

        With `global_batch=None`, `batch` is the whole global batch, identical on every host (every
        host computes it from the shared seed) and each process copies only the rows its devices
        hold. With `global_batch=N`, `batch` holds only this process's rows, the ones `host_shard`
        names: each host builds only its own shard of every batch.
        """
        if shardings is None:
            if global_batch is not None:
                raise ValueError("pass the shardings of the global batch with a host-local batch")
            shardings = self.batch_shardings(batch)
        if global_batch is None:
            if all(s.is_fully_addressable for s in jax.tree.leaves(shardings)):
                return jax.device_put(batch, shardings)  # one process: slices on the host
            return jax.tree.map(
                lambda x, s: jax.make_array_from_callback(np.shape(x), s,
                                                          lambda idx: np.asarray(x[idx])),
                batch, shardings)
        return jax.tree.map(
            lambda x, s: jax.make_array_from_process_local_data(
                s, np.asarray(x), (global_batch,) + np.shape(x)[1:]), batch, shardings)

    def host_shard(self, batch_sharding: NamedSharding, global_batch: int) -> tuple[int, int]:
        """(shard_index, shard_count) of this process's rows in every global batch.

        This process's devices hold rows [i * b, (i + 1) * b) of each global batch (b =
        global_batch // shard_count), which is what `mad_jax.tasks.batches(shard_index=i,
        shard_count=n)` yields; feed them to `shard_batch(..., global_batch=global_batch)`.
        """
        ndim = len(batch_sharding.spec) or 1
        shape = (global_batch,) + (1,) * (ndim - 1)
        rows = {(idx[0].start or 0, global_batch if idx[0].stop is None else idx[0].stop)
                for idx in batch_sharding.addressable_devices_indices_map(shape).values()}
        lo, hi = min(r[0] for r in rows), max(r[1] for r in rows)
        covered = sum(b - a for a, b in rows)
        size = hi - lo
        if covered != size or global_batch % size or lo % size:
            raise ValueError(f"process {jax.process_index()} holds rows {sorted(rows)} of the "
                             "batch: not one aligned block; pass the global batch to shard_batch")
        return lo // size, global_batch // size

    def jit(self, fn: Callable, in_shardings, out_shardings, donate_argnums=()):
        """`jax.jit` with shardings; calls run with the mesh and rules in context."""
        jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                         donate_argnums=donate_argnums)

        def call(*args):
            with self.activate():
                return jitted(*args)

        call.jitted = jitted
        call.lower = lambda *args: _lower_in(self, jitted, args)
        return call

    def train_step(self, step_fn: Callable, state_shardings, batch_shardings, *,
                   donate: bool = True):
        """Wraps a pure `step_fn(state, batch) -> (state, metrics)` as a sharded jitted step.

        State keeps its shardings in and out and is donated. Metrics come back replicated (a few
        scalars, or [R] per run of a sweep), so every host can read them.
        """
        return self.jit(step_fn, (state_shardings, batch_shardings),
                        (state_shardings, self.replicated()), donate_argnums=(0,) if donate else ())

    def eval_step(self, eval_fn: Callable, state_shardings, batch_shardings):
        """Wraps a pure `eval_fn(state, batch) -> metrics` as a sharded jitted step; metrics
        come back replicated."""
        return self.jit(eval_fn, (state_shardings, batch_shardings), self.replicated())


def _lower_in(partitioner: Partitioner, jitted, args):
    with partitioner.activate():
        return jitted.lower(*args)

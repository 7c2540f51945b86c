"""Sharding across devices and hosts: meshes from config, logical-axis rules, sharded states, steps.

    part = mad_jax.sharding.Partitioner.create("data:-1,fsdp:1,tensor:1")
    state, state_sh = part.init(create_state, rng)          # created already sharded
    batch_sh = part.batch_shardings(example_batch)
    train_step = part.train_step(pure_train_step, state_sh, batch_sh)   # jit, shardings, donation
    state, metrics = train_step(state, part.shard_batch(batch))
"""
from mad_jax.sharding.distributed import (DistributedError, initialize, is_main_process,
                                          restore_target)
from mad_jax.sharding.mesh import MESH_AXES, format_mesh, make_mesh, parse_mesh, sweep_mesh
from mad_jax.sharding.partitioning import Partitioner, add_axis, logical_specs, param_specs, unbox
from mad_jax.sharding.rules import DEFAULT_RULES, LOGICAL_AXES, make_rules, mesh_spec

__all__ = ["DEFAULT_RULES", "DistributedError", "LOGICAL_AXES", "MESH_AXES", "Partitioner", "add_axis", "format_mesh",
           "initialize", "is_main_process", "logical_specs", "make_mesh", "make_rules", "mesh_spec",
           "param_specs", "parse_mesh", "restore_target", "sweep_mesh", "unbox"]

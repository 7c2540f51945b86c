"""Multi-host on one machine: two processes with 4 CPU devices each form one 8-device job.

Each process calls `mad_jax.sharding.initialize(True, ...)`, builds a mesh over all 8 devices, takes
only its own rows of every batch from the shared-seed pipeline (`Partitioner.host_shard` ->
`tasks.batches(shard_index=, shard_count=)` -> `shard_batch(global_batch=)`), trains, and writes a
sharded checkpoint together with the other process; only process 0 writes the losses. The test then
checks the losses against one process on 8 devices and restores the two-process checkpoint here, on
another mesh.

This file is also the worker: `python tests/test_sharding_multihost.py <process_id> <port> <dir>`.
"""
import json
import os
import sys

import numpy as np

MESH, BATCH, LENGTH, VOCAB, STEPS = "data:4,fsdp:2", 16, 16, 16, 3


def _data():
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, VOCAB, (64, LENGTH)).astype(np.int32)
    return inputs, np.roll(inputs, -1, axis=1)


def _model_and_state_fns():
    import jax.numpy as jnp

    import mad_jax
    from mad_jax import sharding, training

    model = mad_jax.models.build(["swiglu", "mlp"], vocab_size=VOCAB, max_length=LENGTH, dim=32)
    tx = training.make_optimizer()
    sample = jnp.zeros((1, LENGTH), jnp.int32)

    create = training.make_create_state(model, tx, sample, learning_rate=1e-3, weight_decay=0.1,
                                        total_steps=100)

    return model, tx, create, sharding.param_specs(model, sample)


def _train(part, shard_index, shard_count, num_steps):
    """Trains on this process's rows of each batch; returns (losses, state, step, shardings)."""
    import jax

    from mad_jax import tasks, training

    model, tx, create, specs = _model_and_state_fns()
    state, state_sh = part.init(create, jax.random.key(0), params_specs=specs)
    global_example = {k: np.zeros((BATCH, LENGTH), np.int32) for k in ("inputs", "targets")}
    batch_sh = part.batch_shardings(global_example)
    step = part.train_step(training.make_train_step(model, tx), state_sh, batch_sh)
    inputs, targets = _data()
    rows = tasks.batches(inputs, targets, batch_size=BATCH, seed=0, shard_index=shard_index,
                         shard_count=shard_count)
    losses = []
    for _ in range(num_steps):
        batch = part.shard_batch(next(rows), batch_sh, global_batch=BATCH)
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, state, (step, batch_sh, rows)


def worker(process_id: int, port: int, out_dir: str) -> None:
    from mad_jax import sharding, training

    multi = sharding.initialize(True, coordinator_address=f"localhost:{port}", num_processes=2,
                                process_id=process_id)
    import jax

    assert multi and jax.device_count() == 8 and jax.local_device_count() == 4
    part = sharding.Partitioner.create(MESH)
    global_example = np.zeros((BATCH, LENGTH), np.int32)
    shard_index, shard_count = part.host_shard(part.batch_shardings(global_example), BATCH)
    losses, state, (step, batch_sh, rows) = _train(part, shard_index, shard_count, STEPS)
    checkpointer = training.Checkpointer(os.path.join(out_dir, "ckpt"))
    checkpointer.save(STEPS, state, {"step": STEPS})
    checkpointer.close()
    _, metrics = step(state, part.shard_batch(next(rows), batch_sh, global_batch=BATCH))
    if sharding.is_main_process():
        with open(os.path.join(out_dir, "losses.json"), "w") as f:
            json.dump({"losses": losses, "next_loss": float(metrics["loss"]),
                       "shard": [shard_index, shard_count]}, f)
    jax.distributed.shutdown()



def test_two_processes_train_like_one_and_share_a_sharded_checkpoint(tmp_path):
    import jax

    from mad_jax import sharding, training

    from two_processes import run_two_processes

    run_two_processes(__file__, tmp_path)
    got = json.loads((tmp_path / "losses.json").read_text())
    assert got["shard"][1] == 2  # each process built half of every batch

    # The same training in this one process on 8 devices, every batch built whole.
    part = sharding.Partitioner.create(MESH)
    want, _, _ = _train(part, 0, 1, STEPS + 1)
    np.testing.assert_allclose(got["losses"], want[:STEPS], rtol=1e-5)
    np.testing.assert_allclose(got["next_loss"], want[STEPS], rtol=1e-5)

    # The checkpoint both processes wrote, restored onto another mesh in this process.
    _, _, create, specs = _model_and_state_fns()
    other = sharding.Partitioner.create("fsdp:2,tensor:4")
    abstract, shardings = other.state_shardings(create, jax.random.key(0), params_specs=specs)
    checkpointer = training.Checkpointer(tmp_path / "ckpt")
    restored, _, _ = checkpointer.restore(sharding.restore_target(abstract, shardings))
    checkpointer.close()
    assert int(restored.step) == STEPS
    for leaf, sh in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
        assert leaf.sharding.is_equivalent_to(sh, leaf.ndim)


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])

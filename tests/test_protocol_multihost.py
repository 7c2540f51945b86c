"""The MAD protocol as a two-process job (2 x 4 CPU devices): both processes run the same
`protocol.run` with a sweep mesh, the grid's runs spread over the hosts, checkpoints are written
by both, and only process 0 writes the results table. Same results as one process.

This file is also the worker: `python tests/test_protocol_multihost.py <process_id> <port> <dir>`.
"""
import json
import os
import sys

import numpy as np
import pandas as pd

TASK = "memorization"
GRID = ((1e-3, 0.0), (5e-3, 0.0))
TRAIN = {"train_steps": 4, "batch_size": 8, "max_train_examples": 64, "max_test_examples": 32,
         "eval_every_steps": 2, "checkpoint_every_steps": 2, "log_every_steps": 2,
         "tensorboard": False}


def _run(out_dir: str, mesh: str) -> pd.DataFrame:
    from mad_jax import models, protocol, tasks

    def model_fn(task, vocab_size, max_length):
        return models.build("swiglu mlp", vocab_size=vocab_size, max_length=max_length, dim=32,
                            backbone=tasks.TASK_BACKBONE[task])

    return protocol.run(model_fn, out_dir, tasks=TASK, grid=GRID, preset="smoke", arch="tiny",
                        train_overrides=dict(TRAIN, mesh=mesh), log=lambda s: None)


def worker(process_id: int, port: int, out_dir: str) -> None:
    from mad_jax import sharding

    sharding.initialize(True, coordinator_address=f"localhost:{port}", num_processes=2,
                        process_id=process_id)
    import jax

    assert jax.device_count() == 8 and jax.local_device_count() == 4
    results = _run(os.path.join(out_dir, "sweep"), "sweep:2,data:4")
    with open(os.path.join(out_dir, f"process{process_id}.json"), "w") as f:
        json.dump(results["final_test_acc"].tolist() + results["test_loss"].tolist(), f)
    jax.distributed.shutdown()



def test_two_process_protocol_writes_once_and_matches_one_process(tmp_path):
    from two_processes import run_two_processes

    run_two_processes(__file__, tmp_path)

    per_process = [json.loads((tmp_path / f"process{i}.json").read_text()) for i in range(2)]
    assert per_process[0] == per_process[1]  # every process computed the same results
    table = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert len(table) == len(GRID) and set(table["status"]) == {"ok"}
    run_dir = tmp_path / "sweep" / "runs" / TASK / "baseline"
    assert not (run_dir / "checkpoints").exists()  # removed once the runs finished

    want = _run(str(tmp_path / "one"), "")  # this process, one device
    np.testing.assert_allclose(per_process[0], want["final_test_acc"].tolist()
                               + want["test_loss"].tolist(), rtol=1e-5)


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])

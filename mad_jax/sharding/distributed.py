"""Multi-host: process start-up, which process reports, and restore targets on any mesh.

On a TPU pod slice every host runs the same command; `initialize(True)` connects them (TPU VMs
are discovered automatically; elsewhere pass the coordinator address, the process count and this
process's id). Afterwards `jax.devices()` lists every device of the job, meshes span all hosts,
and each host feeds only the rows of a batch that its own devices hold (`Partitioner.shard_batch`).
Checkpoints are written and read by `mad_jax.training.Checkpointer` (orbax: every host writes the
shards it owns); `restore_target` says where each restored array goes.
"""
from __future__ import annotations

import jax

_initialized = False


class DistributedError(RuntimeError):
    """distributed=True where no multi-host job can be joined."""


def initialize(enabled: bool = False, *, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Calls `jax.distributed.initialize` once when `enabled` (the config's `distributed` flag).

    Must run before anything touches a device. Returns whether the job is multi-process.
    """
    global _initialized
    if enabled and not _initialized:
        try:
            jax.distributed.initialize(coordinator_address=coordinator_address,
                                       num_processes=num_processes, process_id=process_id)
        except Exception as e:  # noqa: BLE001 - jax raises several kinds; all mean "no job"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DistributedError(
                f"distributed=True but no multi-host job was found ({first[:160]}); on a TPU "
                "pod slice run the same command on every host (gcloud compute tpus tpu-vm ssh "
                "... --worker=all --command=...); on GPU hosts under SLURM or Open MPI launch it "
                "with srun / mpirun, else pass coordinator_address, num_processes and "
                "process_id; on one machine drop distributed") from None
        _initialized = True
    return jax.process_count() > 1


def is_main_process() -> bool:
    """True on process 0, the only one that writes results, reports and logs."""
    return jax.process_index() == 0


def restore_target(abstract_state, shardings):
    """jax.ShapeDtypeStructs carrying the target shardings: what orbax (and
    `Checkpointer.restore`) restores onto.

    The target mesh may differ from the one the checkpoint was written on (4x2 -> 8x1 -> 1 device):
    orbax reads each device's slice of every array directly in the new layout.
    """
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_state, shardings)

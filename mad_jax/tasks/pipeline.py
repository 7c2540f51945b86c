"""`batches`: a grain pipeline from in-memory arrays to shuffled, batched, epoch-aware iteration.

    grain.MapDataset.range(N)            row indices
      .shuffle(seed)                     a permutation per epoch (grain reseeds with seed + epoch)
      .batch(batch_size)                 global batches of row indices, batched within each epoch
      .repeat(num_epochs)                epochs (None: forever)
      .map(_Rows)                        this shard's rows of each global batch, gathered
      [start_step:]                      resume: step s of every run is a pure function of s

Every element is indexed, so resuming at a step or taking a shard needs no iterator state: step s
is global batch s, and shard i of shard_count takes rows [i*b, (i+1)*b) of it (b = batch_size //
shard_count), identical on every host. The data are in memory, so grain reads with no worker
threads (its own advice for in-memory data); the returned grain iterator also has get_state /
set_state for grain checkpointing, but a step count is all a trainer needs to resume.
"""
from __future__ import annotations

from typing import Iterator

import grain
import numpy as np

from mad_jax.tasks import seeding, validation


class _Rows:
    """Gathers one shard's rows of a global batch of row indices."""

    def __init__(self, inputs: np.ndarray, targets: np.ndarray, shard_index: int, shard_size: int):
        self._inputs, self._targets = inputs, targets
        self._lo, self._size = shard_index * shard_size, shard_size

    def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        if len(rows) < self._lo + self._size:  # a partial last batch (drop_remainder=False)
            mine = rows[self._lo:]
        else:
            mine = rows[self._lo:self._lo + self._size]
        return {"inputs": self._inputs[mine], "targets": self._targets[mine]}


def batches(inputs: np.ndarray, targets: np.ndarray, *, batch_size: int, seed: int,
            shuffle: bool = True, num_epochs: int | None = None, start_step: int = 0,
            drop_remainder: bool = True, shard_index: int = 0,
            shard_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Iterates {"inputs": int32 [b, L], "targets": int32 [b, L]} batches of a data set.

    batch_size: the global batch; each of shard_count shards (hosts) gets b = batch_size //
      shard_count rows of every global batch (batch_size must be divisible by shard_count).
    seed: shuffling seed; each epoch is a fresh permutation, the same for a given (seed, epoch).
    num_epochs: None repeats forever; an epoch has N // batch_size batches (drop_remainder) or
      ceil(N / batch_size) (the last one partial; only with shard_count == 1 unless N divides).
    start_step: skip the first start_step global batches (resume a run at that step).
    """
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    if inputs.ndim != 2 or inputs.shape != targets.shape:
        raise ValueError(f"inputs and targets must be 2-D of one shape, got {inputs.shape} and "
                         f"{targets.shape}")
    num_rows = len(inputs)
    batch_size = validation.as_int("batch_size", batch_size)
    shard_count = validation.as_int("shard_count", shard_count)
    shard_index = validation.as_int("shard_index", shard_index)
    start_step = validation.non_negative_int("start_step", start_step)
    seed = validation.non_negative_int("seed", seed)
    if shard_count < 1:
        raise ValueError(f"shard_count must be >= 1, got {shard_count}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    if batch_size < 1 or batch_size % shard_count:
        raise ValueError(f"batch_size must be a positive multiple of shard_count={shard_count}, "
                         f"got {batch_size}")
    if drop_remainder and batch_size > num_rows:
        raise ValueError(f"batch_size must be <= the number of examples ({num_rows}) with "
                         f"drop_remainder=True, got {batch_size}")
    if not drop_remainder and shard_count > 1 and num_rows % batch_size:
        raise ValueError(
            f"drop_remainder=False with shard_count={shard_count} needs the number of examples "
            f"({num_rows}) divisible by batch_size={batch_size}: shards would get unequal rows")
    if num_epochs is not None:
        num_epochs = validation.as_int("num_epochs", num_epochs)
        if num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")

    ds = grain.MapDataset.range(num_rows)
    if shuffle:
        ds = ds.shuffle(seed=seeding.uint32_seed(seed, "batches"))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.repeat(num_epochs)
    ds = ds.map(_Rows(inputs, targets, shard_index, batch_size // shard_count))
    if start_step:
        ds = ds[start_step:]
    read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return iter(ds.to_iter_dataset(read_options=read))

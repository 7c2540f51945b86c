"""How many runs fit in one packed program: a per-run byte estimate against the device's memory.

A packed program (`training.fit_packed`) stacks every run's state on a leading axis and steps
them all at once, so its memory grows linearly in the number of runs R:

    bytes(R) ~= R * run_bytes(...).total      (the compiled program's own workspace aside)

`run_bytes` adds three parts, each per run:

- state: 16 bytes per parameter: the parameters, the two AdamW moments (the grid state keeps one
  copy of each per run, float32) and the gradient of the step (float32). The other per-run leaves
  (step, rng, the schedule's hyperparameters, AdamW's count, the active / stop / NaN flags) are a
  few scalars: left out.
- activations: what the training step keeps for its backward pass, measured exactly, not guessed:
  the residuals of `jax.vjp` of the training objective, traced with `jax.eval_shape` on the
  batch's shape (no compile, nothing allocated; any flax module). A per-layer factor times
  B x L x D would be wrong by an order of magnitude for attention, whose residuals include its
  [B, H, L, L] probabilities (quadratic in L); the trace counts them. The model is traced in its
  own dtype, so bf16 compute (`precision="bfloat16"`) is over-counted, which errs safe. XLA
  usually keeps less than the residuals it is handed (it fuses and recomputes cheap ops): the
  default hybrid at batch 128 x 128 tokens traces 1.42 GiB of residuals where XLA:CPU's
  `memory_analysis()` reports 0.94 GiB of temporaries.
- data: the run's batch (inputs and targets, int32) and its eval sets, which stay on the device
  for the whole program (test, and validation when selecting on it).

Why not XLA's `compiled.memory_analysis()`: it is exact for a program, but it needs the program
compiled first (seconds to minutes per shape, which a sweep compiles once and would then compile
again at the chosen size), and vmapping changes fusion, so a one-run program's temporaries still
need extrapolating. The estimate above costs one trace (under a second) per shape.

The device's memory: `device.memory_stats()["bytes_limit"]` where the backend reports it (GPU:
the allocator's pool, already XLA's 75% of HBM by default; TPU: the HBM), times DEVICE_FRACTION
for what the estimate leaves out (the program's workspace, the eval program, fragmentation).
Otherwise (CPU) the host's physical memory (`os.sysconf`), times HOST_FRACTION: the host is
shared with the data, Python and other processes. The bound is per device: a program whose runs
are split over devices (a `sweep` mesh axis) could hold more, so it errs safe there too.
"""
from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from mad_jax.training import losses

STATE_BYTES_PER_PARAM = 4 * 4  # float32 params, AdamW mu and nu, and the step's gradient
DEVICE_FRACTION = 0.8
HOST_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class RunBytes:
    """Bytes one run of a packed program needs on the device (see the module docstring)."""

    params: int         # parameter count
    state: int          # parameters, gradient and AdamW moments
    activations: int    # residuals of the step's backward pass
    data: int           # the run's batch and eval sets

    @property
    def total(self) -> int:
        return self.state + self.activations + self.data


def _nbytes(tree) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def run_bytes(model, *, batch_size: int, seq_len: int, eval_examples: int = 0) -> RunBytes:
    """The per-run bytes of `model` trained on batches int32[batch_size, seq_len], with
    `eval_examples` rows of length seq_len (test + validation) kept on the device for its eval."""
    inputs_BxL = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)

    def init(inputs_BxL):
        return model.init(jax.random.key(0), inputs_BxL)["params"]

    params = jax.eval_shape(init, inputs_BxL)

    def backward_residuals(params, inputs_BxL):
        def objective(params):  # the training objective's shape: every position scored
            logits_BxLxV = model.apply({"params": params}, inputs_BxL, mutable=["losses"],
                                       rngs={"dropout": jax.random.key(0)})[0]
            stats = losses.token_stats(logits_BxLxV.astype(jnp.float32), inputs_BxL)
            return losses.mean_cross_entropy(stats)
        return jax.vjp(objective, params)[1]

    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    residuals = jax.eval_shape(backward_residuals, params, inputs_BxL)
    int32_rows = 2 * (batch_size + eval_examples) * seq_len  # inputs and targets
    return RunBytes(params=n_params, state=STATE_BYTES_PER_PARAM * n_params,
                    activations=_nbytes(residuals), data=4 * int32_rows)


def memory_limit(device: jax.Device | None = None) -> tuple[int, str]:
    """(usable bytes, where the figure comes from) on `device` (default: the first device):
    the accelerator's `bytes_limit` x DEVICE_FRACTION, else host memory x HOST_FRACTION."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # backends without memory statistics (CPU) raise or return None
        stats = {}
    if stats.get("bytes_limit"):
        return (int(stats["bytes_limit"] * DEVICE_FRACTION),
                f"{DEVICE_FRACTION:.0%} of {device.platform}:{device.id}'s "
                f"{stats['bytes_limit'] / 2**30:.1f} GiB")
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(host * HOST_FRACTION), f"{HOST_FRACTION:.0%} of the host's {host / 2**30:.1f} GiB"


def max_runs(model, *, batch_size: int, seq_len: int, eval_examples: int = 0,
             memory_bytes: int | None = None) -> tuple[int, str]:
    """(runs per program, the reason in words): how many runs of `model` fit in one packed
    program on this device (at least 1). memory_bytes: the usable bytes (default:
    `memory_limit()`)."""
    per_run = run_bytes(model, batch_size=batch_size, seq_len=seq_len,
                        eval_examples=eval_examples)
    limit, source = (memory_limit() if memory_bytes is None
                     else (int(memory_bytes), f"{memory_bytes / 2**30:.2f} GiB given"))
    runs = max(1, limit // max(per_run.total, 1))
    return runs, f"memory bound: {per_run.total / 2**20:.1f} MiB per run, {source}"

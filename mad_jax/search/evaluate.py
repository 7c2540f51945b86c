"""The search's quality objective: a genome's MAD score through `protocol.run`.

An evaluator is any callable `evaluate(genome, out_dir) -> {"score": float, ...}` (higher is
better); it may carry an `identity` (JSON: what its scores depend on), which the search stores
with every result, so a stored score is reused only by a search that scores the same way. Tests
pass a cheap function of the genome; `ProtocolEvaluator` trains it.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

from mad_jax.search.errors import SearchError
from mad_jax.search.genome import Genome


class ProtocolEvaluator:
    """A genome's score: `protocol.run` on `tasks` (the preset's settings of each), then the mean
    over those tasks of `protocol.scores` (a NaN score, all runs failed, counts as 0).

    Each genome trains in its own `out_dir` (the search gives `<workdir>/genomes/<key>`), so the
    protocol's own resume picks up a killed evaluation, and its data cache is shared (cache_dir).
    """

    def __init__(self, *, tasks: Sequence[str], preset: str, grid=None,
                 train: Mapping[str, Any] | None = None, dim: int = 128,
                 norm: str = "layernorm", seed: int = 0, cache_dir: str | None = None,
                 progress_every_s: float = 60.0, log: Callable[[str], None] = print):
        from mad_jax import protocol

        self.tasks, self.preset = protocol.check_tasks(list(tasks)), preset
        self.grid = tuple(tuple(float(x) for x in g) for g in grid) if grid else None
        self.train = {k: v for k, v in dict(train or {}).items() if v is not None}
        try:  # the preset's name and the training fields, checked before anything trains
            protocol.train_config(preset, seed=seed, overrides=self.train)
        except ValueError as e:
            raise SearchError(f"evaluation: {' '.join(str(e).split())}") from None
        self.dim, self.norm, self.seed = dim, norm, seed
        self.cache_dir, self.progress_every_s, self.log = cache_dir, progress_every_s, log

    @property
    def identity(self) -> dict:
        """What the scores depend on: devices, logging and checkpoint cadence do not count."""
        from mad_jax.training.config import NOT_IDENTITY

        train = {k: v for k, v in sorted(self.train.items()) if k not in NOT_IDENTITY}
        return {"tasks": self.tasks, "preset": self.preset,
                "grid": [list(g) for g in self.grid] if self.grid else None,
                "train": train, "dim": self.dim, "norm": self.norm, "seed": self.seed}

    def model_fn(self, genome: Genome):
        """model_fn(task, vocab_size, max_length) of the genome (the task's backbone)."""
        from mad_jax import models, tasks as tasks_lib

        def model_fn(task: str, vocab_size: int, max_length: int):
            return models.build(genome.layers, vocab_size=vocab_size, max_length=max_length,
                                dim=self.dim, norm=self.norm,
                                backbone=tasks_lib.TASK_BACKBONE[task],
                                layer_configs=genome.layer_configs)
        return model_fn

    def __call__(self, genome: Genome, out_dir: str) -> dict:
        from mad_jax import protocol

        t0 = time.time()
        results = protocol.run(
            self.model_fn(genome), out_dir, tasks=self.tasks, grid=self.grid,
            preset=self.preset, arch=f"genome-{genome.key}", seed=self.seed,
            train_overrides=self.train, cache_dir=self.cache_dir,
            progress_every_s=self.progress_every_s, log=self.log)
        per_task = protocol.scores(results)
        per_task.pop("mean", None)
        per_task = {t: (0.0 if math.isnan(s) else float(s)) for t, s in per_task.items()}
        failed = int((results["status"] != "ok").sum())
        return {"score": sum(per_task.values()) / len(per_task), "tasks": per_task,
                "runs": int(len(results)), "failed_runs": failed,
                "wall_time_s": round(time.time() - t0, 1)}

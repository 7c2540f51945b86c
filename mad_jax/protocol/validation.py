"""Checks the protocol runs before anything trains or is written: tasks, grid, seeds, the mesh
against the devices, and every architecture against the task data it will see (layer configs
against the width, the model's output classes against the task's vocabulary). Each failure is one
`ProtocolError` line that names the problem and the fix.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from mad_jax.training import model_check
from mad_jax.training.config import TrainConfig
from mad_jax.training.train import make_partitioner


class ProtocolError(ValueError):
    """The protocol cannot start or go on (bad names, unusable out_dir, mismatched workdir)."""


def parse_grid(text: str) -> tuple[tuple[float, float], ...] | None:
    """"lr:wd,lr:wd" (a config field) -> ((lr, wd), ...); "" -> None (the preset's grid)."""
    if not text:
        return None
    try:
        grid = tuple(tuple(float(x) for x in item.split(":")) for item in text.split(","))
    except ValueError:
        grid = ()
    if not grid or any(len(g) != 2 for g in grid):
        raise ProtocolError(f"grid must look like '1e-4:0,1e-3:0.1', got {text!r}")
    return grid


def check_grid(grid: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """(lr, wd) pairs as floats; ProtocolError for an empty grid, lr <= 0 or wd < 0."""
    out = []
    for item in grid:
        try:
            lr, wd = (float(x) for x in item)
        except (TypeError, ValueError):
            raise ProtocolError(f"grid entries must be (learning rate, weight decay) pairs, got "
                                f"{item!r}") from None
        if not (math.isfinite(lr) and lr > 0 and math.isfinite(wd) and wd >= 0):
            raise ProtocolError(f"grid run (lr={lr:g}, wd={wd:g}): the learning rate must be "
                                "> 0 and the weight decay >= 0")
        out.append((lr, wd))
    if not out:
        raise ProtocolError("the grid is empty; give at least one (learning rate, weight decay)")
    return tuple(out)


def check_seeds(seeds) -> int:
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ProtocolError(f"seeds must be a positive integer, got {seeds!r}")
    return seeds


def check_mesh(cfg: TrainConfig, *, num_runs: int) -> None:
    """The training loop's own mesh checks (`make_partitioner`: the axes against the devices,
    the sweep axis against the runs trained together, the batch against the data axes), run
    once before anything trains; ValueError (one line) for a mesh that cannot train them."""
    if cfg.mesh:
        make_partitioner(cfg, group_size=num_runs if cfg.vmap else 1)


def settings_to_check(planned: Sequence[tuple[str, dict, str]]) -> list[tuple[str, dict]]:
    """Per task, the planned settings that bound what a model must accept: the first, the one
    with the largest vocabulary and the one with the longest sequences."""
    by_task: dict[str, list[dict]] = {}
    for task, setting, _ in planned:
        by_task.setdefault(task, []).append(setting)
    out = []
    for task, settings in by_task.items():
        chosen = [settings[0], max(settings, key=lambda s: s.get("vocab_size", 0)),
                  max(settings, key=lambda s: s.get("seq_len", 0))]
        unique = {id(s): s for s in chosen}
        out.extend((task, s) for s in unique.values())
    return out


def check_architecture(model_fn: Callable, planned, *, arch: str, data_seed: int,
                       max_length: Callable[[Mapping, np.ndarray], int]) -> None:
    """Builds and checks the model of every bounding setting (`settings_to_check`) on a few
    examples generated in memory (nothing is written)."""
    from mad_jax import tasks as tasks_lib

    for task, setting in settings_to_check(planned):
        small = dict(setting, num_train_examples=2)
        inputs, _ = tasks_lib.load(task, small, "train", seed=data_seed)
        vocab = int(setting["vocab_size"])
        try:
            model = model_fn(task, vocab, max_length(setting, inputs))
            model_check.check_model(model, arch=arch, task=task, vocab_size=vocab,
                                    inputs=inputs)
        except model_check.ModelError as e:
            raise ProtocolError(str(e)) from None
        except ValueError as e:
            raise ProtocolError(f"architecture {arch!r}: "
                                f"{(str(e).strip().splitlines() or [''])[0]}") from None

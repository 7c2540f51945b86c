"""The task registry: task name -> TaskSpec (baseline parameters, validation, chunk generator).

Each task family module (recall.py, fuzzy_recall.py, copying.py, compression.py, memorization.py)
registers its tasks at import time with `register_task`. `TASKS` fixes the public order.

A task's generator works on one chunk of sequences at a time (generation.chunk_rows), vectorised
with numpy over the whole chunk; `mad_jax.tasks.generate` seeds one stream per chunk.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from mad_jax.tasks import validation

TASKS = (
    "in-context-recall",
    "noisy-in-context-recall",
    "fuzzy-in-context-recall",
    "selective-copying",
    "compression",
    "memorization",
)
SPLITS = ("train", "validation", "test")
IGNORE_INDEX = -100
# Keys a setting dict may carry that size the data set but do not change how a sequence is made.
DATASET_SIZE_KEYS = ("num_train_examples", "num_test_examples", "num_validation_examples")

# make_chunk(rng, params, split, seed, inputs, targets) fills inputs and targets, int32
# [rows, length] (views into the data set's arrays: writing in place saves a copy of the chunk).
# split is "train" or "test" (scoring_split: validation sequences are made as test ones).
# `seed` is the data-set seed, for streams shared by every chunk and split (the memorization map).
ChunkFn = Callable[[np.random.Generator, Mapping[str, Any], str, int, np.ndarray, np.ndarray],
                   None]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A registered task.

    defaults: the baseline generation parameters (name -> int or float); their types are the
      parameter types.
    validate: raises ValueError for parameters the task cannot be generated with.
    make_chunk: the vectorised generator for a chunk of sequences (see ChunkFn).
    length: model sequence length (columns of inputs and targets) for given parameters.
    token_label: (token, params) -> short label for decode(), e.g. "k3", "<copy>".
    backbone: "language-model" or "autoencoder".
    """

    name: str
    defaults: Mapping[str, int | float]
    validate: Callable[[Mapping[str, Any]], None]
    make_chunk: ChunkFn
    length: Callable[[Mapping[str, Any]], int]
    token_label: Callable[[int, Mapping[str, Any]], str]
    backbone: str = "language-model"


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Adds `spec` to the registry (ValueError if the name is taken)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"task {spec.name!r} is already registered")
    if spec.backbone not in ("language-model", "autoencoder"):
        raise ValueError(f"task {spec.name!r}: unknown backbone {spec.backbone!r}")
    _REGISTRY[spec.name] = spec
    return spec


def get_task(task: str) -> TaskSpec:
    """Returns the TaskSpec of `task`; ValueError listing the valid names if unknown."""
    try:
        return _REGISTRY[task]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}") from None


def resolve_params(task: str, params: Mapping[str, Any]) -> dict[str, int | float]:
    """The full, validated generation parameters of `task`: baseline values updated by `params`.

    Dataset-size keys (num_train_examples, num_test_examples, num_validation_examples) are
    accepted and dropped. Values are
    normalised to plain Python int / float so that hashing them (seeds, cache keys) is stable.
    Raises ValueError for an unknown task, an unknown parameter, or an invalid value.
    """
    spec = get_task(task)
    unknown = sorted(k for k in params if k not in spec.defaults and k not in DATASET_SIZE_KEYS)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for task {task!r}; valid parameters: "
            f"{', '.join(spec.defaults)} (and {', '.join(DATASET_SIZE_KEYS)})")
    resolved: dict[str, int | float] = {}
    for name, default in spec.defaults.items():
        value = params.get(name, default)
        if isinstance(default, float):
            resolved[name] = validation.as_float(name, value)
        else:
            resolved[name] = validation.as_int(name, value)
    spec.validate(resolved)
    return resolved


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def scoring_split(split: str) -> str:
    """The split whose layout and scoring a split's sequences follow: "validation" is made as
    "test" (from its own stream), so task generators only ever see "train" or "test"."""
    return "test" if split == "validation" else split

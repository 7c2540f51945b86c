"""`generate`: a task's data set as int32 numpy arrays, built chunk by chunk.

Rows come in chunks of `chunk_rows(length)` sequences (about 2^18 tokens: large enough to amortise
numpy's per-call cost, small enough that a chunk's temporaries stay in cache). Chunk c is
generated, vectorised, from its own stream (seeding.chunk_rng) straight into the output arrays,
and a request for n rows makes ceil(n / rows) whole chunks and keeps the first n rows. So the data
do not depend on who generates which chunk (workers, hosts), and a smaller data set of the same
(task, params, split, seed) is a prefix of a larger one: the 800-example training set of a
setting is the first 800 rows of its 12,800-example one.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mad_jax.tasks import seeding, validation
from mad_jax.tasks.registry import check_split, get_task, resolve_params

CHUNK_TOKENS = 2 ** 18
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 256, 1024


def chunk_rows(length: int) -> int:
    """Sequences per chunk for sequences of `length` tokens (a power of two in [256, 1024])."""
    rows = MAX_CHUNK_ROWS
    while rows > MIN_CHUNK_ROWS and rows * length > CHUNK_TOKENS:
        rows //= 2
    return rows


def generate_chunk(task: str, params: dict[str, Any], split: str, seed: int,
                   chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk `chunk` of the data set (rows [chunk * R, (chunk + 1) * R), R = chunk_rows(length)),
    for resolved params: (inputs, targets), int32 [R, length]."""
    length = get_task(task).length(params)
    inputs = np.empty((chunk_rows(length), length), np.int32)
    targets = np.empty((chunk_rows(length), length), np.int32)
    _fill_chunk(task, params, split, seed, chunk, inputs, targets)
    return inputs, targets


def _fill_chunk(task, params, split, seed, chunk, inputs, targets) -> None:
    rng = seeding.chunk_rng(task, params, split, seed, chunk)
    get_task(task).make_chunk(rng, params, split, seed, inputs, targets)


def generate(task: str, *, num_examples: int, seed: int, split: str = "train",
             **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """Generates `num_examples` sequences of `task`.

    params: generation parameters (vocab_size, seq_len, ...); missing ones take the task's baseline
      value; num_train_examples / num_test_examples are accepted and ignored, so a whole setting
      dict from `settings(task)` can be passed.
    Returns (inputs, targets): int32 [num_examples, length]; targets are -100 where nothing is
    scored. length is seq_len - 1 for the recall tasks (the sequence minus its last token) and
    seq_len otherwise. Same (task, params, split, seed) -> identical arrays everywhere.
    """
    spec = get_task(task)
    p = resolve_params(task, params)
    check_split(split)
    num_examples = validation.non_negative_int("num_examples", num_examples)
    seed = validation.non_negative_int("seed", seed)
    length = spec.length(p)
    rows = chunk_rows(length)
    inputs = np.empty((num_examples, length), np.int32)
    targets = np.empty((num_examples, length), np.int32)
    for chunk, start in enumerate(range(0, num_examples, rows)):
        stop = start + rows
        if stop <= num_examples:  # a whole chunk: written in place
            _fill_chunk(task, p, split, seed, chunk, inputs[start:stop], targets[start:stop])
        else:
            x, y = generate_chunk(task, p, split, seed, chunk)
            inputs[start:] = x[:num_examples - start]
            targets[start:] = y[:num_examples - start]
    return inputs, targets

"""`generate`: a task's data set as int32 numpy arrays, built chunk by chunk.

Rows come in chunks of `chunk_rows(length)` sequences (about 2^18 tokens: large enough to amortise
numpy's per-call cost, small enough that a chunk's temporaries stay in cache). Chunk c is
generated, vectorised, from its own stream (seeding.chunk_rng) straight into the output arrays,
and a request for n rows makes ceil(n / rows) whole chunks and keeps the first n rows. So the data
do not depend on who generates which chunk (workers, hosts), and a smaller data set of the same
(task, params, split, seed) is a prefix of a larger one: the 800-example training set of a
setting is the first 800 rows of its 12,800-example one.

The validation split is made and scored as the test split, from its own streams, and skips every
sequence whose inputs equal those of one of the first `num_test_examples` test rows: its chunks
are generated in order and the surviving rows kept in order, so it too is deterministic and
prefix-stable (for a given test-set size).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mad_jax.tasks import grid, seeding, validation
from mad_jax.tasks.registry import check_split, get_task, resolve_params, scoring_split

CHUNK_TOKENS = 2 ** 18
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 256, 1024
# The validation split gives up (a setting with too few distinct sequences) after drawing this
# many times the chunks it needs.
MAX_VALIDATION_DRAW_FACTOR = 16


def chunk_rows(length: int) -> int:
    """Sequences per chunk for sequences of `length` tokens (a power of two in [256, 1024])."""
    rows = MAX_CHUNK_ROWS
    while rows > MIN_CHUNK_ROWS and rows * length > CHUNK_TOKENS:
        rows //= 2
    return rows


def generate_chunk(task: str, params: dict[str, Any], split: str, seed: int,
                   chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk `chunk` of the data set (rows [chunk * R, (chunk + 1) * R), R = chunk_rows(length)),
    for resolved params: (inputs, targets), int32 [R, length]. For "validation": the chunk as
    drawn, before rows equal to test rows are dropped."""
    length = get_task(task).length(params)
    inputs = np.empty((chunk_rows(length), length), np.int32)
    targets = np.empty((chunk_rows(length), length), np.int32)
    _fill_chunk(task, params, split, seed, chunk, inputs, targets)
    return inputs, targets


def _fill_chunk(task, params, split, seed, chunk, inputs, targets) -> None:
    rng = seeding.chunk_rng(task, params, split, seed, chunk)
    get_task(task).make_chunk(rng, params, scoring_split(split), seed, inputs, targets)


def _chunked(task: str, p: dict[str, Any], split: str, seed: int,
             num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `num_examples` rows of the chunks of (task, p, split, seed)."""
    length = get_task(task).length(p)
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


def _validation(task: str, p: dict[str, Any], seed: int, num_examples: int,
                num_test_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation rows: the rows of the validation chunks, in order, whose inputs differ from
    those of every one of the first `num_test_examples` test rows."""
    length = get_task(task).length(p)
    inputs = np.empty((num_examples, length), np.int32)
    targets = np.empty((num_examples, length), np.int32)
    if num_examples == 0:
        return inputs, targets
    test_inputs, _ = _chunked(task, p, "test", seed, num_test_examples)
    in_test = {row.tobytes() for row in test_inputs}
    rows = chunk_rows(length)
    max_chunks = MAX_VALIDATION_DRAW_FACTOR * -(-num_examples // rows)
    filled = chunk = 0
    while filled < num_examples:
        if chunk == max_chunks:
            raise ValueError(
                f"{task}: only {filled} of {num_examples} validation sequences differ from the "
                f"{num_test_examples} test sequences after {chunk * rows} draws (the setting has "
                f"too few distinct sequences); use a smaller num_validation_examples or "
                f"num_test_examples, or a longer seq_len or larger vocab_size")
        x, y = generate_chunk(task, p, "validation", seed, chunk)
        fresh = np.fromiter((row.tobytes() not in in_test for row in x), bool, len(x))
        x, y = x[fresh][:num_examples - filled], y[fresh][:num_examples - filled]
        inputs[filled:filled + len(x)] = x
        targets[filled:filled + len(x)] = y
        filled += len(x)
        chunk += 1
    return inputs, targets


def generate(task: str, *, num_examples: int, seed: int, split: str = "train",
             **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """Generates `num_examples` sequences of `task`.

    split: "train", "test", or "validation" (for model selection held out from the test set):
      made and scored exactly as "test", from its own random streams, and no validation row has
      the inputs of one of the first num_test_examples test rows (params["num_test_examples"],
      else the grid's 1280).
    params: generation parameters (vocab_size, seq_len, ...); missing ones take the task's baseline
      value; num_train_examples / num_test_examples / num_validation_examples are accepted (only
      num_test_examples, for "validation", is read), so a whole setting dict from
      `settings(task)` can be passed.
    Returns (inputs, targets): int32 [num_examples, length]; targets are -100 where nothing is
    scored. length is seq_len - 1 for in-context recall and noisy in-context recall (the sequence
    minus its last token) and seq_len otherwise (fuzzy recall's sequences are seq_len + 1 tokens
    long, as the reference's). Same (task, params, split, seed) -> identical arrays everywhere.
    """
    get_task(task)
    p = resolve_params(task, params)
    check_split(split)
    num_examples = validation.non_negative_int("num_examples", num_examples)
    seed = validation.non_negative_int("seed", seed)
    if split == "validation":
        num_test = validation.non_negative_int(
            "num_test_examples", params.get("num_test_examples", grid.NUM_TEST_EXAMPLES))
        return _validation(task, p, seed, num_examples, num_test)
    return _chunked(task, p, split, seed, num_examples)

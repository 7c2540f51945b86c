"""Memorization: one fixed key -> value map for the whole data set.

Keys [0, (V-1)//2), values [(V-1)//2, V-1), insert token V-1. The map sends the keys to distinct
values (a bijection onto a random subset of the values; there is one more value than keys when
V-1 is odd), drawn from a stream that depends only on (seed, vocab_size), so every example of
every split shares it: the task is recalling that map. A sequence is seq_len/2 items
`key, insert` with uniform keys; the target at each insert position is that key's value, -100
elsewhere. Same layout in every split; validation sequences differ from test ones as key
sequences (the map is the same).
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

from mad_jax.tasks import seeding, validation
from mad_jax.tasks.registry import IGNORE_INDEX, TaskSpec, register_task

TASK = "memorization"


def _validate(p: Mapping[str, Any]) -> None:
    validation.at_least("vocab_size", p["vocab_size"], 3, TASK,
                        "at least one key, its value and the insert token")
    validation.at_least("seq_len", p["seq_len"], 2, TASK)
    validation.even("seq_len", p["seq_len"], TASK)


@functools.lru_cache(maxsize=32)
def memorization_map(vocab_size: int, seed: int) -> np.ndarray:
    """The data set's map: int32 [(vocab_size-1)//2], entry k is key k's value token."""
    num_keys = (vocab_size - 1) // 2
    num_values = vocab_size - 1 - num_keys
    rng = seeding.shared_rng(seed, TASK, "map", vocab_size)
    values = (num_keys + rng.permutation(num_values)[:num_keys]).astype(np.int32)
    values.flags.writeable = False
    return values


def _make_chunk(rng: np.random.Generator, p: Mapping[str, Any], split: str, seed: int,
                inputs: np.ndarray, targets: np.ndarray) -> None:
    del split
    vocab, L = p["vocab_size"], p["seq_len"]
    value_of = memorization_map(vocab, seed)
    keys_BxN = rng.integers(0, len(value_of), (len(inputs), L // 2), dtype=np.int32)
    inputs[:, 0::2] = keys_BxN
    inputs[:, 1::2] = vocab - 1
    targets[:, 0::2] = IGNORE_INDEX
    targets[:, 1::2] = value_of.take(keys_BxN)


def _token_label(token: int, p: Mapping[str, Any]) -> str:
    if token == p["vocab_size"] - 1:
        return "<ins>"
    return f"k{token}" if token < (p["vocab_size"] - 1) // 2 else f"v{token}"


register_task(TaskSpec(
    name=TASK,
    defaults={"vocab_size": 256, "seq_len": 32},
    validate=_validate,
    make_chunk=_make_chunk,
    length=lambda p: p["seq_len"],
    token_label=_token_label,
))

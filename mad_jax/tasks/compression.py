"""Compression: `seq_len - 1` uniform tokens from [0, V-1), then the compression token V-1.
The target is the whole input (autoencoder backbone: the encoder's last position is decoded into
every position)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mad_jax.tasks import validation
from mad_jax.tasks.registry import TaskSpec, register_task

TASK = "compression"


def _validate(p: Mapping[str, Any]) -> None:
    validation.at_least("vocab_size", p["vocab_size"], 2, TASK,
                        "at least one data token plus the compression token")
    validation.at_least("seq_len", p["seq_len"], 2, TASK,
                        "at least one token plus the compression token")


def _make_chunk(rng: np.random.Generator, p: Mapping[str, Any], split: str, seed: int,
                inputs: np.ndarray, targets: np.ndarray) -> None:
    del split, seed
    vocab, L = p["vocab_size"], p["seq_len"]
    inputs[:, :-1] = rng.integers(0, vocab - 1, (len(inputs), L - 1), dtype=np.int32)
    inputs[:, -1] = vocab - 1
    targets[...] = inputs


def _token_label(token: int, p: Mapping[str, Any]) -> str:
    return "<compress>" if token == p["vocab_size"] - 1 else str(token)


register_task(TaskSpec(
    name=TASK,
    defaults={"vocab_size": 16, "seq_len": 32},
    validate=_validate,
    make_chunk=_make_chunk,
    length=lambda p: p["seq_len"],
    token_label=_token_label,
    backbone="autoencoder",
))

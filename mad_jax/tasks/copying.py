"""Selective copying.

Vocabulary: tokens to copy [0, V-2), blank V-2, copy V-1. A sequence is `num_tokens_to_copy`
uniform tokens kept in order with `seq_len - 2 * num_tokens_to_copy - 1` blanks inserted before
them, each blank before a token chosen uniformly (so the last token to copy sits right before the
copy token, as in the reference), then the copy token, then `num_tokens_to_copy` blanks. Targets
are -100 except the last `num_tokens_to_copy` positions, which hold the tokens to copy in order.
Both splits have the same layout. The blank gaps are drawn from the seeded stream (the
reference draws them from numpy's global RNG, so its data are not reproducible).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mad_jax.tasks import validation
from mad_jax.tasks.arrayops import row_offsets
from mad_jax.tasks.registry import IGNORE_INDEX, TaskSpec, register_task

TASK = "selective-copying"


def _validate(p: Mapping[str, Any]) -> None:
    validation.at_least("vocab_size", p["vocab_size"], 3, TASK,
                        "at least one token to copy plus the blank and copy tokens")
    validation.at_least("num_tokens_to_copy", p["num_tokens_to_copy"], 1, TASK)
    n, L = p["num_tokens_to_copy"], p["seq_len"]
    if 2 * n + 2 > L:
        raise ValueError(
            f"{TASK}: num_tokens_to_copy must be in [1, {(L - 2) // 2}] for seq_len={L} "
            f"(at most (seq_len - 2) // 2: the tokens, at least one blank, the copy token and "
            f"the answer slots), got {n}")


def _make_chunk(rng: np.random.Generator, p: Mapping[str, Any], split: str, seed: int,
                inputs: np.ndarray, targets: np.ndarray) -> None:
    del split, seed
    vocab, L, n = p["vocab_size"], p["seq_len"], p["num_tokens_to_copy"]
    B = len(inputs)
    blank, copy = vocab - 2, vocab - 1
    num_blanks = L - 2 * n - 1
    tokens_BxN = rng.integers(0, vocab - 2, (B, n), dtype=np.int32)
    # Each blank goes before a uniform token: the counts per token are multinomial (one draw per
    # token instead of one per blank).
    blanks_before_BxN = rng.multinomial(num_blanks, np.full(n, 1 / n), size=B)
    column_BxN = np.cumsum(blanks_before_BxN, axis=1)
    column_BxN += np.arange(n) + row_offsets(B, L)  # flat index of each token to copy

    inputs.fill(blank)
    inputs.reshape(-1)[column_BxN] = tokens_BxN
    inputs[:, L - n - 1] = copy
    targets[:, :L - n] = IGNORE_INDEX
    targets[:, L - n:] = tokens_BxN


def _token_label(token: int, p: Mapping[str, Any]) -> str:
    if token == p["vocab_size"] - 2:
        return "_"
    if token == p["vocab_size"] - 1:
        return "<copy>"
    return str(token)


register_task(TaskSpec(
    name=TASK,
    defaults={"vocab_size": 16, "seq_len": 256, "num_tokens_to_copy": 16},
    validate=_validate,
    make_chunk=_make_chunk,
    length=lambda p: p["seq_len"],
    token_label=_token_label,
))

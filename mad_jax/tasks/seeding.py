"""Random streams for data generation, identical on every machine and for any worker count.

A stream is a numpy Generator (PCG64) seeded by `SeedSequence(seed, spawn_key=...)`, where the
spawn key is a stable hash (sha256 of canonical JSON, never Python's salted `hash`) of what the
stream is for: (task, generation parameters, split) plus the chunk index for sequence data, or a
tag such as "memorization-map" for data-set-wide draws. The train, validation and test splits
of one setting therefore never share a stream, and chunk c is the same whoever generates it.

numpy documents its Generator streams as stable for a fixed numpy version; requirements.txt pins it.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np


def stable_hash_words(*parts: Any, words: int = 4) -> tuple[int, ...]:
    """`words` 32-bit integers from sha256 of the canonical JSON of `parts`."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(blob).digest()
    return tuple(int.from_bytes(digest[4 * i:4 * i + 4], "little") for i in range(words))


def chunk_rng(task: str, params: Mapping[str, Any], split: str, seed: int,
              chunk: int) -> np.random.Generator:
    """The stream for chunk `chunk` of (task, params, split, seed)."""
    key = stable_hash_words("chunk", task, dict(params), split) + (int(chunk),)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=key)))


def shared_rng(seed: int, *tag: Any) -> np.random.Generator:
    """A data-set-wide stream (shared by all chunks and splits), named by `tag`."""
    key = stable_hash_words("shared", *tag)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=key)))


def uint32_seed(seed: int, *tag: Any) -> int:
    """A 32-bit seed derived from `seed` and `tag` (for APIs such as grain's shuffle)."""
    state = np.random.SeedSequence(int(seed), spawn_key=stable_hash_words("uint32", *tag))
    return int(state.generate_state(1, np.uint32)[0])

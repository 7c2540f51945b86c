"""Vectorised motif helpers for fuzzy recall: distinct-token motifs and motif ids."""
from __future__ import annotations

import numpy as np


def distinct_tokens(rng: np.random.Generator, shape: tuple[int, ...], size: int,
                    num_tokens: int) -> np.ndarray:
    """A uniformly random ordered tuple of `size` distinct tokens from [0, num_tokens) for every
    index of `shape`: int32 [size, *shape] (motif position first, so that elementwise work runs
    over long contiguous rows). Its first s entries are a uniform distinct s-tuple.

    The i-th token is the r-th unused token, r uniform in [0, num_tokens - i): start at r and step
    over every earlier token <= the running value, in ascending order. The earlier tokens are kept
    sorted by insertion (elementwise min/max), which is cheaper than np.sort on a short axis.
    """
    out = np.empty((size,) + shape, np.int32)
    ascending: list[np.ndarray] = []
    for i in range(size):
        token = rng.integers(0, num_tokens - i, shape, dtype=np.int32)
        for earlier in ascending:
            token += token >= earlier
        out[i] = token
        if i + 1 < size:
            merged, carry = [], token
            for earlier in ascending:
                merged.append(np.minimum(earlier, carry))
                carry = np.maximum(earlier, carry)
            ascending = merged + [carry]
    return out


def motif_ids(tokens: np.ndarray, sizes: np.ndarray, num_tokens: int) -> tuple[np.ndarray, int]:
    """An integer id per motif, equal exactly when motifs are equal (motifs of different sizes
    differ), and an exclusive upper bound of the ids. tokens: [W, *shape] (position first), tokens
    in [0, num_tokens); sizes: [*shape], the motif uses the first `sizes` positions. Ids are only
    comparable within one call."""
    width = tokens.shape[0]
    if (num_tokens + 1) ** width < 2 ** 40:
        dtype = np.int32 if (num_tokens + 1) ** width < 2 ** 31 else np.int64
        ids = np.zeros(sizes.shape, dtype)
        for w in range(width):
            # digit w is token + 1 where the motif has a position w, else 0
            digit = tokens[w].astype(dtype)
            digit += 1
            digit *= sizes > w
            digit *= (num_tokens + 1) ** w
            ids += digit
        return ids, (num_tokens + 1) ** width
    # Too many possible motifs for a positional code: number the distinct motifs present.
    masked = np.where(np.arange(width)[:, None] < sizes.reshape(1, -1),
                      tokens.reshape(width, -1), -1).T
    unique, ids = np.unique(masked, axis=0, return_inverse=True)
    return ids.reshape(sizes.shape).astype(np.int64), len(unique)

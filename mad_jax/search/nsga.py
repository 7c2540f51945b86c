"""NSGA-II selection (Deb et al. 2002): non-dominated sorting, crowding distance, environmental
selection and binary tournaments. Objectives are minimised: objectives_NxM, one row per genome.

Ties are broken by row order, never by a hash or a set's order, so the same inputs always give
the same selection.
"""
from __future__ import annotations

import numpy as np


def dominates(a_M: np.ndarray, b_M: np.ndarray) -> bool:
    """a is no worse than b in every objective and better in one."""
    return bool(np.all(a_M <= b_M) and np.any(a_M < b_M))


def non_dominated_sort(objectives_NxM: np.ndarray) -> list[list[int]]:
    """Fronts of row indices: front 0 is dominated by none, front k only by fronts < k."""
    obj = np.asarray(objectives_NxM, float)
    n = len(obj)
    dominated_by = [[] for _ in range(n)]   # rows that row i dominates
    count = np.zeros(n, int)                # how many rows dominate row i
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(obj[i], obj[j]):
                dominated_by[i].append(j)
                count[j] += 1
            elif dominates(obj[j], obj[i]):
                dominated_by[j].append(i)
                count[i] += 1
    fronts, current = [], [i for i in range(n) if count[i] == 0]
    while current:
        fronts.append(current)
        following = []
        for i in current:
            for j in dominated_by[i]:
                count[j] -= 1
                if count[j] == 0:
                    following.append(j)
        current = sorted(following)
    return fronts


def crowding_distance(objectives_KxM: np.ndarray) -> np.ndarray:
    """Per row of one front: the sum over objectives of the normalised gap between its two
    neighbours; the extremes of each objective get infinity."""
    obj = np.asarray(objectives_KxM, float)
    k, m = obj.shape
    distance = np.zeros(k)
    if k <= 2:
        return np.full(k, np.inf)
    for col in range(m):
        order = np.argsort(obj[:, col], kind="stable")
        low, high = obj[order[0], col], obj[order[-1], col]
        distance[order[0]] = distance[order[-1]] = np.inf
        if high > low:
            gaps = (obj[order[2:], col] - obj[order[:-2], col]) / (high - low)
            distance[order[1:-1]] += gaps
    return distance


def rank_and_crowding(objectives_NxM: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank_N: the front of each row, crowding_N: its crowding distance within its front)."""
    obj = np.asarray(objectives_NxM, float)
    rank, crowding = np.zeros(len(obj), int), np.zeros(len(obj))
    for r, front in enumerate(non_dominated_sort(obj)):
        rank[front] = r
        crowding[front] = crowding_distance(obj[front])
    return rank, crowding


def select(objectives_NxM: np.ndarray, k: int) -> list[int]:
    """The k rows NSGA-II keeps: whole fronts in order, then the least crowded of the front
    that does not fit (larger distance first, then row order)."""
    obj = np.asarray(objectives_NxM, float)
    chosen: list[int] = []
    for front in non_dominated_sort(obj):
        if len(chosen) + len(front) <= k:
            chosen += front
            continue
        distance = crowding_distance(obj[front])
        order = sorted(range(len(front)), key=lambda i: (-distance[i], front[i]))
        chosen += [front[i] for i in order[:k - len(chosen)]]
        break
    return chosen


def tournament(rng: np.random.Generator, rank_N: np.ndarray, crowding_N: np.ndarray) -> int:
    """Binary tournament: of two rows drawn at random, the lower rank, then the larger crowding
    distance, then the first drawn."""
    a, b = (int(i) for i in rng.integers(len(rank_N), size=2))
    if (rank_N[b], -crowding_N[b]) < (rank_N[a], -crowding_N[a]):
        return b
    return a

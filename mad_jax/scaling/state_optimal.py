"""State-optimal analysis: perplexity against the inference state a model keeps per sequence.

`state_size` (`mad_jax.models.state_size` at the sweep's sequence length) is the memory a model
needs to generate the next token: the KV cache for attention, the SSM state for Mamba, the
filter-length history for Hyena. For every (family, budget) the compute-optimal run (lowest
validation loss at that budget) gives one point (state size, perplexity); a family's points are
fitted by a power law  perplexity = k * state^-s,  with a bootstrap interval for s. The Pareto
frontier over all runs (lowest perplexity reachable with at most a given state) shows which
families buy perplexity with the least state.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from mad_jax.scaling.fits import PowerLaw, fit_power_law


@dataclasses.dataclass(frozen=True)
class StatePoint:
    family: str
    budget: float
    params: int
    state_size: int
    perplexity: float
    name: str = ""


@dataclasses.dataclass(frozen=True)
class StateLaw:
    """Perplexity ~ coef * state^exponent over a family's compute-optimal points (exponent = -s)."""

    family: str
    points: tuple[StatePoint, ...]
    law: PowerLaw | None

    @property
    def s(self) -> float:
        return -self.law.exponent if self.law else float("nan")

    def summary(self) -> dict:
        out = {"family": self.family, "points": [dataclasses.asdict(p) for p in self.points]}
        if self.law is None:
            out.update(s=None, ci=None, coef=None, r2=None)
        else:
            out.update(s=self.s, ci=sorted([-self.law.ci[0], -self.law.ci[1]]),
                       coef=self.law.coef, r2=self.law.r2)
        return out


def _usable(rows: Sequence[Mapping]) -> list[Mapping]:
    return [r for r in rows if not r.get("diverged") and math.isfinite(float(r["eval_perplexity"]))]


def compute_optimal_points(rows: Sequence[Mapping]) -> list[StatePoint]:
    """The lowest-loss run of every (family, budget), as state points."""
    best: dict[tuple[str, float], Mapping] = {}
    for r in _usable(rows):
        key = (str(r["family"]), float(r["budget"]))
        if key not in best or float(r["eval_loss"]) < float(best[key]["eval_loss"]):
            best[key] = r
    return [StatePoint(f, b, int(r["params"]), int(r["state_size"]), float(r["eval_perplexity"]),
                       str(r.get("name", ""))) for (f, b), r in sorted(best.items())]


def pareto_frontier(rows: Sequence[Mapping], family: str | None = None) -> list[StatePoint]:
    """Runs not beaten by a run with less or equal state: perplexity falls along the list."""
    runs = [r for r in _usable(rows) if family is None or str(r["family"]) == family]
    runs.sort(key=lambda r: (int(r["state_size"]), float(r["eval_perplexity"])))
    out, best = [], math.inf
    for r in runs:
        if float(r["eval_perplexity"]) < best:
            best = float(r["eval_perplexity"])
            out.append(StatePoint(str(r["family"]), float(r["budget"]), int(r["params"]),
                                  int(r["state_size"]), best, str(r.get("name", ""))))
    return out


def fit_state_laws(rows: Sequence[Mapping], *, bootstrap: int = 1000, confidence: float = 0.95,
                   seed: int = 0) -> dict[str, StateLaw]:
    """One `StateLaw` per family from its compute-optimal points (no law with < 2 states)."""

    points = compute_optimal_points(rows)
    rng = np.random.default_rng(seed)
    out = {}
    for family in dict.fromkeys(p.family for p in points):
        pts = tuple(p for p in points if p.family == family)
        states = np.array([p.state_size for p in pts], np.float64)
        ppl = np.array([p.perplexity for p in pts], np.float64)
        law = None
        if len(np.unique(states)) >= 2:
            law = fit_power_law(states, ppl)
            samples = []
            for _ in range(bootstrap if len(pts) >= 3 else 0):
                pick = rng.integers(0, len(pts), len(pts))
                if len(np.unique(states[pick])) >= 2:
                    samples.append(fit_power_law(states[pick], ppl[pick]).exponent)
            if samples:
                q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]
                lo, hi = np.percentile(samples, q)
                law = dataclasses.replace(law, ci=(float(lo), float(hi)))
        out[family] = StateLaw(family, pts, law)
    return out

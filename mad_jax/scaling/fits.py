"""Compute-optimal scaling fits from IsoFLOP sweeps (Chinchilla's "approach 2").

Per FLOP budget C, the final loss of the models trained at C is fitted by a parabola in ln N;
its vertex gives N_opt(C) and loss_opt(C), and D_opt(C) = C / F(N_opt), with F the training FLOPs
per token interpolated (log-log) between the budget's models. Across budgets, power laws

    N_opt = k_N C^a,    D_opt = k_D C^b,    loss_opt = k_L C^-c

are least-squares lines in log-log space. Confidence intervals come from a bootstrap that resamples
the runs of every budget with replacement and repeats the whole fit (percentile intervals).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Parabola:
    """loss = curvature * (ln N - ln N_opt)^2 + loss_opt, fitted on one budget's runs.

    `valid` is False when the points do not bracket a minimum (curvature <= 0) or the vertex lies
    outside the sampled range of N (an extrapolated optimum).
    """

    budget: float
    n_opt: float
    loss_opt: float
    curvature: float
    num_points: int
    valid: bool
    log_n_range: tuple[float, float]

    def __call__(self, n):
        return self.curvature * (np.log(n) - math.log(self.n_opt)) ** 2 + self.loss_opt


def fit_parabola(params: Sequence[float], losses: Sequence[float],
                 budget: float = float("nan")) -> Parabola:
    """Least-squares parabola of `losses` in ln(params); needs 3 distinct sizes."""
    x = np.log(np.asarray(params, np.float64))
    y = np.asarray(losses, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(np.unique(x)) < 3:
        raise ValueError(f"a parabola needs 3 distinct model sizes, got {len(np.unique(x))} "
                         f"(budget {budget:.3g})")
    a, b, c = np.polyfit(x, y, 2)
    lo, hi = float(x.min()), float(x.max())
    if a <= 0:
        vertex = x[np.argmin(y)]
        return Parabola(budget, float(np.exp(vertex)), float(y.min()), float(a), len(x), False,
                        (lo, hi))
    vertex = -b / (2 * a)
    valid = lo <= vertex <= hi
    return Parabola(budget, float(np.exp(vertex)), float(c - b * b / (4 * a)), float(a), len(x),
                    bool(valid), (lo, hi))


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y = coef * x ** exponent, fitted in log-log space; `ci`: bootstrap interval of exponent."""

    coef: float
    exponent: float
    r2: float
    ci: tuple[float, float] = (float("nan"), float("nan"))

    def __call__(self, x):
        return self.coef * np.asarray(x, np.float64) ** self.exponent


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    """Least squares of ln y on ln x; needs 2 points with distinct positive x."""
    lx, ly = np.log(np.asarray(x, np.float64)), np.log(np.asarray(y, np.float64))
    keep = np.isfinite(lx) & np.isfinite(ly)
    lx, ly = lx[keep], ly[keep]
    if len(np.unique(lx)) < 2:
        raise ValueError(f"a power law needs 2 distinct x values, got {len(np.unique(lx))}")
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    total = np.sum((ly - ly.mean()) ** 2)
    r2 = 1.0 - float(np.sum(resid ** 2) / total) if total > 0 else 1.0
    return PowerLaw(float(np.exp(intercept)), float(slope), r2)


@dataclasses.dataclass(frozen=True)
class Frontier:
    """The compute-optimal frontier of one architecture family.

    `parabolas` has one entry per budget (valid or not); the power laws use the valid ones:
    n_law (exponent a), d_law (exponent b) and loss_law (exponent -c).
    """

    family: str
    parabolas: tuple[Parabola, ...]
    d_opt: tuple[float, ...]
    n_law: PowerLaw | None
    d_law: PowerLaw | None
    loss_law: PowerLaw | None
    bootstrap_samples: int

    @property
    def a(self) -> float:
        return self.n_law.exponent if self.n_law else float("nan")

    @property
    def b(self) -> float:
        return self.d_law.exponent if self.d_law else float("nan")

    @property
    def c(self) -> float:
        return -self.loss_law.exponent if self.loss_law else float("nan")

    def interval(self, name: str) -> tuple[float, float]:
        """Bootstrap interval of exponent "a", "b" or "c" (c's sign flipped like c itself)."""
        law = {"a": self.n_law, "b": self.d_law, "c": self.loss_law}[name]
        if law is None:
            return (float("nan"), float("nan"))
        lo, hi = law.ci
        return tuple(sorted((-lo, -hi))) if name == "c" else (lo, hi)

    def summary(self) -> dict:
        def law(p, sign=1.0):
            if p is None:
                return {"exponent": None, "ci": None, "coef": None, "r2": None}
            lo, hi = sorted((sign * p.ci[0], sign * p.ci[1]))
            return {"exponent": sign * p.exponent, "ci": [lo, hi], "coef": p.coef, "r2": p.r2}
        return {"family": self.family, "a": law(self.n_law), "b": law(self.d_law),
                "c": law(self.loss_law, -1.0), "bootstrap_samples": self.bootstrap_samples,
                "budgets": [{"budget": p.budget, "n_opt": p.n_opt, "d_opt": d,
                             "loss_opt": p.loss_opt, "curvature": p.curvature,
                             "points": p.num_points, "valid": p.valid}
                            for p, d in zip(self.parabolas, self.d_opt)]}



def _tokens_at(n_opt: float, params: np.ndarray, fpt: np.ndarray, budget: float) -> float:
    """D_opt = C / F(N_opt), F interpolated as a log-log line through the budget's (N, F) points."""
    if len(np.unique(params)) >= 2:
        slope, intercept = np.polyfit(np.log(params), np.log(fpt), 1)
        return float(budget / np.exp(intercept + slope * math.log(n_opt)))
    return float(budget / (fpt[0] * n_opt / params[0]))


def _frontier_points(groups):
    """(parabolas, d_opt) for budget groups [(C, params, losses, fpt), ...]."""
    parabolas, d_opt = [], []
    for budget, params, losses, fpt in groups:
        p = fit_parabola(params, losses, budget)
        parabolas.append(p)
        d_opt.append(_tokens_at(p.n_opt, params, fpt, budget))
    return parabolas, d_opt


def _laws(parabolas, d_opt):
    use = [i for i, p in enumerate(parabolas) if p.valid]
    if len(use) < 2:
        return None, None, None
    c = [parabolas[i].budget for i in use]
    return (fit_power_law(c, [parabolas[i].n_opt for i in use]),
            fit_power_law(c, [d_opt[i] for i in use]),
            fit_power_law(c, [parabolas[i].loss_opt for i in use]))


def fit_frontier(budgets: Sequence[float], params: Sequence[float], losses: Sequence[float],
                 flops_per_token: Sequence[float], *, family: str = "", bootstrap: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> Frontier:
    """Fits parabolas per budget and the three power laws, with bootstrap intervals.

    Args:
      budgets, params, losses, flops_per_token: one entry per run (runs that diverged should be
        left out); runs sharing a budget form one IsoFLOP curve.
      family: label.
      bootstrap: resamples (0: no intervals).
      confidence: interval mass (0.95 -> 2.5th and 97.5th percentiles).
      seed: the bootstrap's generator.
    """
    budgets_R = np.asarray(budgets, np.float64)
    params_R = np.asarray(params, np.float64)
    losses_R = np.asarray(losses, np.float64)
    fpt_R = np.asarray(flops_per_token, np.float64)
    groups = []
    for budget in np.unique(budgets_R):
        idx = np.flatnonzero((budgets_R == budget) & np.isfinite(losses_R))
        if len(np.unique(params_R[idx])) >= 3:
            groups.append((float(budget), idx))
    if not groups:
        raise ValueError(f"{family or 'frontier'}: no budget has runs at 3 distinct model sizes")
    parabolas, d_opt = _frontier_points([(c, params_R[i], losses_R[i], fpt_R[i])
                                         for c, i in groups])
    n_law, d_law, loss_law = _laws(parabolas, d_opt)
    done = 0
    if bootstrap and n_law is not None:
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(bootstrap):
            resampled = []
            for c, idx in groups:
                pick = rng.choice(idx, size=len(idx), replace=True)
                if len(np.unique(params_R[pick])) < 3:
                    pick = idx
                resampled.append((c, params_R[pick], losses_R[pick], fpt_R[pick]))
            try:
                laws = _laws(*_frontier_points(resampled))
            except (ValueError, np.linalg.LinAlgError):
                continue
            if laws[0] is not None:
                samples.append([law.exponent for law in laws])
        done = len(samples)
        if samples:
            q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]
            lo, hi = np.percentile(np.asarray(samples), q, axis=0)
            n_law = dataclasses.replace(n_law, ci=(float(lo[0]), float(hi[0])))
            d_law = dataclasses.replace(d_law, ci=(float(lo[1]), float(hi[1])))
            loss_law = dataclasses.replace(loss_law, ci=(float(lo[2]), float(hi[2])))
    return Frontier(family, tuple(parabolas), tuple(d_opt), n_law, d_law, loss_law, done)


def fit_frontiers(rows: Sequence[Mapping], *, loss_key: str = "eval_loss", bootstrap: int = 1000,
                  seed: int = 0) -> dict[str, Frontier]:
    """One `Frontier` per family from result rows (dicts or DataFrame records) with keys family,
    budget, params, flops_per_token and `loss_key`; diverged runs are skipped. Families with no
    budget of 3 sizes are left out."""
    by_family: dict[str, list[Mapping]] = {}
    for row in rows:
        if row.get("diverged") or not np.isfinite(float(row[loss_key])):
            continue
        by_family.setdefault(str(row["family"]), []).append(row)
    out = {}
    for family, runs in by_family.items():
        try:
            out[family] = fit_frontier(
                [r["budget"] for r in runs], [r["params"] for r in runs],
                [r[loss_key] for r in runs], [r["flops_per_token"] for r in runs],
                family=family, bootstrap=bootstrap, seed=seed)

        except ValueError:
            continue
    return out

"""Do MAD scores predict compute-optimal perplexity? Pearson and Spearman across architectures.

MAD scores come from protocol results (`mad_jax.protocol.scores(results, arch=...)["mean"]`) or
are given as numbers; compute-optimal perplexity per family comes from the IsoFLOP fits
(exp(loss_opt) at a budget every family reached). The MAD paper reports that higher MAD scores
go with lower perplexity, i.e. a negative correlation.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from mad_jax import storage


def _parse_pairs(text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected 'family=value' pairs, got {item!r} in {text!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def _score_from(value, arch: str) -> float:
    """A number, or the mean MAD score of `arch` in a protocol results CSV."""
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    from mad_jax import protocol  # noqa: PLC0415 - protocol results are optional input

    if not storage.exists(value):
        raise FileNotFoundError(f"MAD results {value!r} not found")
    table = storage.read_csv(value)
    return float(protocol.scores(table, arch=arch if "arch" in table.columns else None)["mean"])


def load_mad_scores(spec, arch_map: str | Mapping[str, str] = "") -> dict[str, float]:
    """MAD score per family.

    `spec` is a mapping {family: score or results.csv}, "family=score,...", a JSON file with such a
    mapping, or one protocol results CSV holding several architectures, where `arch_map`
    ("family=arch,...") names each family's architecture (families without an entry are skipped).
    """
    if spec is None or spec == "":
        return {}
    arch_of = _parse_pairs(arch_map) if isinstance(arch_map, str) else dict(arch_map)
    if isinstance(spec, Mapping):
        return {f: _score_from(v, arch_of.get(f, f)) for f, v in spec.items()}
    text = str(spec)
    if text.endswith(".json"):
        return load_mad_scores(storage.read_json(text), arch_of)
    if text.endswith(".csv"):
        from mad_jax import protocol  # noqa: PLC0415

        if not storage.exists(text):
            raise FileNotFoundError(f"MAD results {text!r} not found")
        table = storage.read_csv(text)
        archs = set(table["arch"].dropna()) if "arch" in table.columns else set()
        return {f: float(protocol.scores(table, arch=a)["mean"])
                for f, a in arch_of.items() if a in archs}
    return {f: _score_from(v, arch_of.get(f, f)) for f, v in _parse_pairs(text).items()}


def correlate(mad_scores: Mapping[str, float], perplexity: Mapping[str, float]) -> dict:
    """Pearson and Spearman correlation (with two-sided p-values) over families present in both.

    Raises ValueError with fewer than 3 common families (a correlation of 2 points is +-1).
    """
    from scipy import stats  # noqa: PLC0415 - scipy ships with jax

    families = [f for f in mad_scores if f in perplexity and math.isfinite(float(perplexity[f]))]
    if len(families) < 3:
        raise ValueError(f"a correlation needs MAD scores and perplexities for >= 3 families, "
                         f"got {families} (scores for {sorted(mad_scores)}, perplexities for "
                         f"{sorted(perplexity)})")
    x = np.array([float(mad_scores[f]) for f in families])
    y = np.array([float(perplexity[f]) for f in families])
    pearson = stats.pearsonr(x, y)
    spearman = stats.spearmanr(x, y)
    return {"families": families, "n": len(families), "mad_scores": x.tolist(),
            "perplexity": y.tolist(),
            "pearson": {"r": float(pearson.statistic), "p": float(pearson.pvalue)},

            "spearman": {"rho": float(spearman.statistic), "p": float(spearman.pvalue)}}

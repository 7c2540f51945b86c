"""Scaling-law fits recover known exponents from synthetic IsoFLOP data; state laws, correlation,
the report.

Tolerance (stated): with loss noise of standard deviation 0.003 nats on 5 budgets x 7 sizes, the
fitted exponents a, b and c are within 0.02 of the true ones and their 95% bootstrap intervals
contain them; without noise they are exact to 1e-6.
"""
import json
import math

import numpy as np
import pytest

from mad_jax.scaling import correlation, fits, report, state_optimal


def synthetic_isoflop(a, c, *, noise, seed=0, budgets=np.geomspace(1e15, 1e19, 5), curvature=0.08):
    """IsoFLOP runs with N_opt = 0.1 C^a, loss_opt = 20 C^-c and F = 6N (so D_opt ~ C^(1-a))."""
    rng = np.random.default_rng(seed)
    rows = []
    for budget in budgets:
        n_opt, loss_opt = 0.1 * budget ** a, 20.0 * budget ** -c
        for x in np.linspace(-1.5, 1.5, 7):
            n = n_opt * math.exp(x)
            rows.append({"family": "synthetic", "budget": budget, "params": n,
                         "flops_per_token": 6 * n,
                         "eval_loss": loss_opt + curvature * x * x + rng.normal(0, noise)})
    return rows


def _fit(rows, bootstrap=300):
    return fits.fit_frontier([r["budget"] for r in rows], [r["params"] for r in rows],
                             [r["eval_loss"] for r in rows], [r["flops_per_token"] for r in rows],
                             bootstrap=bootstrap, seed=1)


@pytest.mark.parametrize("a, c", [(0.5, 0.05), (0.62, 0.03), (0.4, 0.08)])
def test_fits_recover_known_exponents(a, c):
    b = 1.0 - a
    exact = _fit(synthetic_isoflop(a, c, noise=0.0), bootstrap=0)
    assert exact.a == pytest.approx(a, abs=1e-6)
    assert exact.b == pytest.approx(b, abs=1e-6)
    assert exact.c == pytest.approx(c, abs=1e-6)
    assert all(p.valid for p in exact.parabolas)
    noisy = _fit(synthetic_isoflop(a, c, noise=0.003))
    for name, true in (("a", a), ("b", b), ("c", c)):
        assert getattr(noisy, name) == pytest.approx(true, abs=0.02)
        lo, hi = noisy.interval(name)
        assert lo <= true <= hi, (name, lo, hi, true)
    assert noisy.bootstrap_samples == 300


def test_parabola_and_power_law_basics():
    n = np.geomspace(1e6, 1e8, 5)
    p = fits.fit_parabola(n, 2.0 + 0.1 * (np.log(n) - math.log(1e7)) ** 2, budget=1e18)
    assert p.valid and p.n_opt == pytest.approx(1e7, rel=1e-6) and p.loss_opt == pytest.approx(2.0)
    flat = fits.fit_parabola(n, 3.0 - 0.1 * np.log(n))  # monotone: the optimum is off the range
    assert not flat.valid
    with pytest.raises(ValueError, match="3 distinct model sizes"):
        fits.fit_parabola([1e6, 1e6, 2e6], [1, 2, 3])
    law = fits.fit_power_law([1, 10, 100], [3, 3 * 10 ** 0.5, 3 * 100 ** 0.5])
    assert law.exponent == pytest.approx(0.5) and law.coef == pytest.approx(3.0)


def test_fit_frontiers_skips_diverged_and_thin_families():
    rows = synthetic_isoflop(0.5, 0.05, noise=0.0)
    rows.append({**rows[0], "eval_loss": float("nan"), "diverged": True})
    rows += [{"family": "thin", "budget": 1e15, "params": 1e6, "flops_per_token": 6e6,
              "eval_loss": 3.0}]
    frontiers = fits.fit_frontiers(rows, bootstrap=0)
    assert set(frontiers) == {"synthetic"}
    assert frontiers["synthetic"].a == pytest.approx(0.5, abs=1e-6)


def _state_rows(s_true=0.2):
    rows = []
    for i, budget in enumerate([1e11, 3e11, 1e12, 3e12]):
        state = 1000 * 2 ** i
        for j, bump in enumerate([0.0, 0.05]):
            ppl = 50 * state ** -s_true * math.exp(bump)
            rows.append({"family": "f", "budget": budget, "params": 1000 + j, "state_size": state,
                         "eval_loss": math.log(ppl), "eval_perplexity": ppl, "name": f"r{i}{j}"})
    return rows


def test_state_law_recovers_exponent():
    laws = state_optimal.fit_state_laws(_state_rows(0.2), bootstrap=50)
    assert laws["f"].s == pytest.approx(0.2, abs=1e-9)
    assert len(laws["f"].points) == 4  # one compute-optimal point per budget
    frontier = state_optimal.pareto_frontier(_state_rows(0.2))
    assert [p.state_size for p in frontier] == [1000, 2000, 4000, 8000]


def test_correlation_and_mad_score_inputs(tmp_path):
    result = correlation.correlate({"a": 0.9, "b": 0.7, "c": 0.5, "d": 0.2},
                                   {"a": 8.0, "b": 9.0, "c": 9.5, "d": 12.0})
    assert result["spearman"]["rho"] == pytest.approx(-1.0)
    x, y = np.array([0.9, 0.7, 0.5, 0.2]), np.array([8.0, 9.0, 9.5, 12.0])
    assert result["pearson"]["r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    with pytest.raises(ValueError, match=">= 3 families"):
        correlation.correlate({"a": 1, "b": 2}, {"a": 1, "b": 2})
    assert correlation.load_mad_scores("a=0.5, b=0.75") == {"a": 0.5, "b": 0.75}
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"hyena": 0.61, "mamba": 0.66}))
    assert correlation.load_mad_scores(str(path)) == {"hyena": 0.61, "mamba": 0.66}
    # A protocol results table (several architectures) mapped onto families.
    csv = tmp_path / "results.csv"
    lines = ["arch,task,setting,learning_rate,weight_decay,status,final_test_acc"]
    for arch, acc in (("attention", 0.8), ("hyena", 0.6)):
        for setting, bonus in (("s0", 0.0), ("s1", 0.1)):
            lines += [f"{arch},in-context-recall,{setting},1e-3,0.0,ok,{acc + bonus}",
                      f"{arch},in-context-recall,{setting},1e-4,0.0,ok,{acc - 0.2}"]
    csv.write_text("\n".join(lines) + "\n")
    scores = correlation.load_mad_scores(str(csv),
                                         "transformer++=attention,hyena=hyena,mamba=mamba")
    assert scores == {"transformer++": pytest.approx(0.85), "hyena": pytest.approx(0.65)}


def test_report_from_synthetic_rows(tmp_path):
    rows = []
    for family, shift in (("x", 0.0), ("y", 0.1), ("z", 0.2)):
        for r in synthetic_isoflop(0.5, 0.05, noise=0.0):
            tokens = r["budget"] / r["flops_per_token"]
            rows.append({**r, "family": family, "eval_loss": r["eval_loss"] + shift,
                         "name": f"{family}-{len(rows)}", "state_size": int(r["params"] / 10),
                         "eval_perplexity": math.exp(r["eval_loss"] + shift),
                         "tokens": int(tokens), "train_seconds": 1.0,
                         "tokens_per_param": tokens / r["params"], "diverged": False})

    summary = report.write_report(rows, str(tmp_path), bootstrap=20, mad_scores="x=0.9,y=0.7,z=0.4")
    assert [f for f, _ in summary["ranking"]["order"]] == ["x", "y", "z"]
    assert summary["frontiers"]["x"]["a"]["exponent"] == pytest.approx(0.5, abs=1e-6)
    assert summary["correlation"]["spearman"]["rho"] == pytest.approx(-1.0)
    for name in ("isoflop.png", "frontier.png", "state_optimal.png", "mad_correlation.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "report.md").read_text()
    assert "## Compute-optimal exponents" in text and "| x | 0.500" in text
    assert json.loads((tmp_path / "summary.json").read_text())["ranking"]["order"][0][0] == "x"

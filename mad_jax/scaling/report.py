"""The scaling report: fits of a results table, PNG plots, summary.json and report.md.

    summary = write_report(rows, workdir)      # rows: results.csv records (isoflop.RESULT_COLUMNS)

Plots (under <workdir>/plots/): isoflop.png (loss vs parameters per budget, one panel per family,
with the fitted parabolas and their minima), frontier.png (N_opt, D_opt and loss_opt against C
with the fitted power laws), state_optimal.png (perplexity vs inference state), and
mad_correlation.png when MAD scores are given.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from mad_jax import figures, storage
from mad_jax.scaling import correlation, fits, state_optimal

PLOTS = ("isoflop.png", "frontier.png", "state_optimal.png")


def _rows(rows) -> list[dict]:
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    out = []
    for r in rows:
        r = dict(r)
        r["diverged"] = str(r.get("diverged")).lower() in ("true", "1")
        out.append(r)
    return out


def compute_optimal(rows: Sequence[Mapping], frontiers: Mapping[str, fits.Frontier]) -> dict:
    """Per family and budget: the parabola's optimum (when valid) and the best run.

    `loss` is the parabola's loss_opt where its vertex lies inside the sampled sizes, else the
    best run's loss. Returns {family: {budget: {...}}}.
    """
    table: dict[str, dict[float, dict]] = {}
    for r in rows:
        if r["diverged"] or not math.isfinite(float(r["eval_loss"])):
            continue
        by_budget = table.setdefault(str(r["family"]), {})
        entry = by_budget.setdefault(float(r["budget"]), {"best_loss": math.inf})
        if float(r["eval_loss"]) < entry["best_loss"]:
            entry.update(best_loss=float(r["eval_loss"]), best_run=r["name"],
                         best_params=int(r["params"]))
    for family, budgets in table.items():
        parabolas = {}
        if family in frontiers:
            parabolas = {p.budget: (p, d)
                         for p, d in zip(frontiers[family].parabolas, frontiers[family].d_opt)}
        for budget, entry in budgets.items():
            p, d = parabolas.get(budget, (None, None))
            valid = bool(p is not None and p.valid)
            entry.update(parabola_valid=valid, n_opt=p.n_opt if valid else None,
                         d_opt=d if valid else None, loss_opt=p.loss_opt if valid else None)
            entry["loss"] = p.loss_opt if valid else entry["best_loss"]
            entry["perplexity"] = math.exp(entry["loss"])
    return table


def ranking(optimal: Mapping[str, Mapping[float, Mapping]]
            ) -> tuple[float | None, list[tuple[str, float]]]:
    """(budget, [(family, compute-optimal perplexity), best first]) at the largest shared budget."""
    if not optimal:
        return None, []
    shared = set.intersection(*(set(b) for b in optimal.values()))
    if not shared:
        return None, []
    budget = max(shared)
    order = sorted(((f, b[budget]["perplexity"]) for f, b in optimal.items()), key=lambda x: x[1])
    return budget, order


def _save(fig, path: str) -> None:
    figures.save(fig, path, dpi=120, bbox_inches="tight")



def _log_ticks(ax, *, x: bool = True, y: bool = False, plain_y: bool = False) -> None:
    """Log axes labelled 1e4, 1e5 ... without crowded minor labels; `plain_y` labels a narrow
    log y range (perplexities) with plain numbers at every tick."""
    from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: PLC0415

    sci = FuncFormatter(lambda v, _: f"{v:.0e}".replace("e+0", "e").replace("e+", "e"))
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    axes = ([ax.xaxis] if x else []) + ([ax.yaxis] if y else [])
    for axis in axes:
        axis.set_major_formatter(sci)
        axis.set_minor_formatter(NullFormatter())
    if plain_y:
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)


def plot_isoflop(rows, frontiers, path: str) -> None:
    families = list(dict.fromkeys(str(r["family"]) for r in rows))
    budgets = sorted({float(r["budget"]) for r in rows})
    colors = figures.colormap("viridis")(np.linspace(0.05, 0.9, max(len(budgets), 1)))
    fig, axes = figures.subplots(1, len(families), figsize=(4.2 * len(families), 3.6),
                                 squeeze=False, sharey=True)
    for ax, family in zip(axes[0], families):
        parabolas = {p.budget: p for p in frontiers[family].parabolas} \
            if family in frontiers else {}
        for color, budget in zip(colors, budgets):
            pts = [r for r in rows if str(r["family"]) == family and float(r["budget"]) == budget
                   and not r["diverged"] and math.isfinite(float(r["eval_loss"]))]
            if not pts:
                continue
            n = np.array([float(r["params"]) for r in pts])
            loss = np.array([float(r["eval_loss"]) for r in pts])
            ax.scatter(n, loss, color=color, s=18, label=f"C={budget:.1e}")
            p = parabolas.get(budget)
            if p is not None and p.curvature > 0:
                grid = np.exp(np.linspace(p.log_n_range[0], p.log_n_range[1], 100))
                ax.plot(grid, p(grid), color=color, lw=1)
                if p.valid:
                    ax.scatter([p.n_opt], [p.loss_opt], color=color, marker="*", s=90,
                               edgecolor="k", zorder=5)
        ax.set_xscale("log")
        _log_ticks(ax)
        ax.set_title(family)
        ax.set_xlabel("parameters N")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation loss (nats/token)")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7)
    fig.suptitle("IsoFLOP curves (stars: fitted optima)")
    _save(fig, path)


def plot_frontier(frontiers: Mapping[str, fits.Frontier], path: str) -> None:
    fig, axes = figures.subplots(1, 3, figsize=(13, 3.8))
    for i, family in enumerate(frontiers):
        fr = frontiers[family]
        color = f"C{i}"
        use = [k for k, p in enumerate(fr.parabolas) if p.valid]
        c = np.array([fr.parabolas[k].budget for k in use])
        series = [(np.array([fr.parabolas[k].n_opt for k in use]), fr.n_law, "a"),
                  (np.array([fr.d_opt[k] for k in use]), fr.d_law, "b"),
                  (np.array([fr.parabolas[k].loss_opt for k in use]), fr.loss_law, "c")]
        for ax, (y, law, name) in zip(axes, series):
            if not len(c):
                continue
            exponent = {"a": fr.a, "b": fr.b, "c": fr.c}[name]
            ax.scatter(c, y, color=color, s=20)
            if law is not None:
                grid = np.geomspace(c.min() / 1.5, c.max() * 1.5, 50)
                ax.plot(grid, law(grid), color=color, lw=1,
                        label=f"{family}: {name}={exponent:.3f}")
            else:
                ax.plot([], [], color=color, label=f"{family}: too few valid budgets")
    for k, (ax, title) in enumerate(zip(axes, ("N_opt ~ C^a", "D_opt ~ C^b", "loss_opt ~ C^-c"))):
        ax.set_xscale("log")
        if k < 2:  # the loss panel stays linear: its range is far narrower than a decade
            ax.set_yscale("log")
        _log_ticks(ax, y=k < 2)
        ax.set_title(title)
        ax.set_xlabel("training FLOPs C")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("parameters")
    axes[1].set_ylabel("tokens")
    axes[2].set_ylabel("validation loss")
    _save(fig, path)


def plot_state(rows, laws: Mapping[str, state_optimal.StateLaw], path: str) -> None:
    fig, ax = figures.subplots(figsize=(5.5, 4))
    for i, family in enumerate(dict.fromkeys(str(r["family"]) for r in rows)):
        color = f"C{i}"
        pts = [r for r in rows if str(r["family"]) == family and not r["diverged"]
               and math.isfinite(float(r["eval_perplexity"]))]
        ax.scatter([r["state_size"] for r in pts], [r["eval_perplexity"] for r in pts],
                   color=color, s=8, alpha=0.35)
        law = laws.get(family)
        if law is None:
            continue
        s = np.array([p.state_size for p in law.points])
        ax.scatter(s, [p.perplexity for p in law.points], color=color, s=40, edgecolor="k",
                   label=f"{family}" + (f": s={law.s:.3f}" if law.law else ""))
        if law.law is not None:
            grid = np.geomspace(s.min() / 1.3, s.max() * 1.3, 50)
            ax.plot(grid, law.law(grid), color=color, lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_ticks(ax, plain_y=True)
    ax.set_xlabel("inference state per sequence (numbers)")

    ax.set_ylabel("validation perplexity")
    ax.set_title("State-optimal scaling (large dots: compute-optimal runs)")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_correlation(result: Mapping, path: str) -> None:
    fig, ax = figures.subplots(figsize=(4.8, 3.8))
    ax.scatter(result["mad_scores"], result["perplexity"])
    for f, x, y in zip(result["families"], result["mad_scores"], result["perplexity"]):
        ax.annotate(f, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("MAD score (mean accuracy)")
    ax.set_ylabel("compute-optimal perplexity")
    ax.set_title(f"Pearson r={result['pearson']['r']:.2f}, "
                 f"Spearman rho={result['spearman']['rho']:.2f}")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _fmt(x, spec=".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


def _ci(ci) -> str:
    if not ci or any(v is None or not math.isfinite(v) for v in ci):
        return "-"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def markdown(summary: Mapping, rows: Sequence[Mapping]) -> str:
    lines = ["# Scaling sweep report", "", f"Written {summary['written']}.", ""]
    setup = summary.get("setup") or {}
    if setup:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in setup.items()] + [""]
    lines += ["FLOPs convention: training FLOPs per token = 3 x forward FLOPs per sequence / "
              "seq_len (`mad_jax.models.flops`; backward = 2 x forward). A run at budget C trains "
              "floor(C / FLOPs-per-token / tokens-per-step) steps with warmup + cosine decay "
              "ending there.", "",
              "## Compute-optimal exponents", "",
              "Parabola of validation loss in ln N per budget; power laws over budgets; 95% "
              f"bootstrap intervals ({summary['bootstrap']} resamples of each budget's runs).", "",
              "| family | a: N_opt ~ C^a | b: D_opt ~ C^b | c: loss_opt ~ C^-c | valid budgets |",
              "|---|---|---|---|---|"]
    for fam in summary["frontiers"].values():
        valid = sum(b["valid"] for b in fam["budgets"])
        cells = [f"{_fmt(fam[k]['exponent'], '.3f')} {_ci(fam[k]['ci'])}" for k in ("a", "b", "c")]
        lines.append(f"| {fam['family']} | {' | '.join(cells)} | {valid}/{len(fam['budgets'])} |")
    lines += ["", "## Compute-optimal models per budget", "",
              "| family | budget | N_opt | D_opt | loss_opt | perplexity | parabola | best run |",
              "|---|---|---|---|---|---|---|---|"]
    for family, budgets in summary["compute_optimal"].items():
        for budget, e in sorted(budgets.items(), key=lambda kv: float(kv[0])):
            parabola = "ok" if e["parabola_valid"] else "edge/flat"
            lines.append(f"| {family} | {float(budget):.2e} | {_fmt(e['n_opt'])} | "
                         f"{_fmt(e['d_opt'])} | {_fmt(e['loss'], '.4f')} | "
                         f"{_fmt(e['perplexity'], '.3f')} | {parabola} | "
                         f"{e['best_run']} ({e['best_loss']:.4f}) |")
    lines += ["", "## Ranking", ""]
    if summary["ranking"]["order"]:
        lines.append(f"Compute-optimal perplexity at C = {summary['ranking']['budget']:.2e} FLOPs "
                     "(best first):")
        lines.append("")
        lines += [f"{i + 1}. {f}: {p:.3f}" for i, (f, p) in enumerate(summary["ranking"]["order"])]
    else:
        lines.append("No budget shared by every family.")
    lines += ["", "## State-optimal scaling", "",
              "Compute-optimal run of each budget: validation perplexity ~ k * state^-s.", "",
              "| family | s | 95% CI | points (state -> perplexity) |", "|---|---|---|---|"]
    for law in summary["state_laws"].values():
        pts = ", ".join(f"{p['state_size']:,} -> {p['perplexity']:.3f}" for p in law["points"])
        lines.append(f"| {law['family']} | {_fmt(law['s'], '.3f')} | {_ci(law['ci'])} | {pts} |")
    if summary.get("correlation"):
        c = summary["correlation"]
        lines += ["", "## MAD score vs compute-optimal perplexity", "",
                  f"{c['n']} families at C = {summary['ranking']['budget']:.2e}: Pearson r = "
                  f"{c['pearson']['r']:.3f} (p = {c['pearson']['p']:.3g}), Spearman rho = "
                  f"{c['spearman']['rho']:.3f} (p = {c['spearman']['p']:.3g}).",
                  "", "| family | MAD score | perplexity |", "|---|---|---|"]
        lines += [f"| {f} | {s:.4f} | {p:.3f} |"
                  for f, s, p in zip(c["families"], c["mad_scores"], c["perplexity"])]
    elif summary.get("correlation_note"):
        lines += ["", "## MAD score vs compute-optimal perplexity", "", summary["correlation_note"]]
    lines += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in summary["plots"]]
    lines += ["", "## Runs", "",
              "| run | params | tokens | tokens/param | eval loss | perplexity | seconds |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {int(r['params']):,} | {int(r['tokens']):,} | "
                     f"{float(r['tokens_per_param']):.1f} | {float(r['eval_loss']):.4f} | "
                     f"{float(r['eval_perplexity']):.3f} | {float(r['train_seconds']):.0f} |")
    return "\n".join(lines) + "\n"


def write_report(rows, workdir: str, *, bootstrap: int = 1000, seed: int = 0, mad_scores=None,
                 mad_arch_map: str | Mapping[str, str] = "", setup: Mapping | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """Fits everything, writes plots, summary.json and report.md to `workdir`; returns a summary."""

    rows = _rows(rows)
    if not rows:
        raise ValueError("no results to report")
    frontiers = fits.fit_frontiers(rows, bootstrap=bootstrap, seed=seed)
    laws = state_optimal.fit_state_laws(rows, bootstrap=bootstrap, seed=seed)
    optimal = compute_optimal(rows, frontiers)
    budget, order = ranking(optimal)
    summary = {"written": time.strftime("%Y-%m-%d %H:%M:%S"), "setup": dict(setup or {}),
               "bootstrap": bootstrap,
               "frontiers": {f: fr.summary() for f, fr in frontiers.items()},
               "compute_optimal": {f: {str(b): e for b, e in bs.items()}
                                   for f, bs in optimal.items()},
               "ranking": {"budget": budget, "order": order},
               "state_laws": {f: law.summary() for f, law in laws.items()}, "plots": list(PLOTS)}
    if mad_scores:
        scores = correlation.load_mad_scores(mad_scores, mad_arch_map)
        perplexity = {f: p for f, p in order}
        try:
            summary["correlation"] = correlation.correlate(scores, perplexity)
        except ValueError as e:
            summary["correlation_note"] = str(e)
    plot_dir = storage.join(workdir, "plots")
    plot_isoflop(rows, frontiers, storage.join(plot_dir, "isoflop.png"))
    plot_frontier(frontiers, storage.join(plot_dir, "frontier.png"))
    plot_state(rows, laws, storage.join(plot_dir, "state_optimal.png"))
    if summary.get("correlation"):
        plot_correlation(summary["correlation"], storage.join(plot_dir, "mad_correlation.png"))
        summary["plots"].append("mad_correlation.png")
    storage.write_json(storage.join(workdir, "summary.json"), summary)
    storage.write_text(storage.join(workdir, "report.md"), markdown(summary, rows))
    if log:
        log(f"report: {storage.join(workdir, 'report.md')} (plots: {', '.join(summary['plots'])})")
    return summary


def summary_lines(summary: Mapping) -> list[str]:
    """A few lines for the console: exponents per family and the ranking."""
    lines = []
    for fam in summary["frontiers"].values():
        parts = [f"{k}={_fmt(fam[k]['exponent'], '.3f')} {_ci(fam[k]['ci'])}"
                 for k in ("a", "b", "c")]

        lines.append(f"{fam['family']}: " + ", ".join(parts))
    if summary["ranking"]["order"]:
        lines.append(f"ranking at C={summary['ranking']['budget']:.2e}: " +
                     " < ".join(f"{f} ({p:.3f})" for f, p in summary["ranking"]["order"]))
    return lines

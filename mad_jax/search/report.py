"""The search's report: report.md, genomes.csv and plots/*.png in the workdir (mad_jax.storage).

  - the Pareto front of every genome evaluated (score, state, parameters), as a table;
  - score against state size and against parameters, with each plane's own front drawn and the
    baseline (the hand-designed default hybrid) marked, as plots;
  - where the baseline sits: which front genomes dominate it, or that none does;
  - the population's best and mean score per generation, as a table and a plot.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from mad_jax import figures, storage
from mad_jax.search import nsga

PLOTS = ("pareto_state.png", "pareto_params.png", "best_per_generation.png")


def _score(record: dict) -> float:
    score = (record.get("evaluation") or {}).get("score")
    return 0.0 if score is None or score != score else float(score)


def _row(record: dict, tasks: list[str]) -> dict:
    evaluation = record.get("evaluation") or {}
    row = {"genome": record["label"], "score": round(_score(record), 4)}
    for task in tasks:
        row[task] = round(float((evaluation.get("tasks") or {}).get(task, float("nan"))), 4)
    row.update(params=record["costs"]["params"], state=record["costs"]["state"],
               flops=record["costs"]["flops"], failed_runs=evaluation.get("failed_runs", 0),
               key=record["key"])
    return row


def _markdown(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3f}"
        if isinstance(value, (int, np.integer)):
            return f"{int(value):,}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _front_2d(records: list[dict], cost: str) -> list[int]:
    """Rows non-dominated in (score up, `cost` down), by increasing cost."""
    obj = np.array([[-_score(r), r["costs"][cost]] for r in records], float)
    front = nsga.non_dominated_sort(obj)[0] if len(obj) else []
    return sorted(front, key=lambda i: (obj[i, 1], obj[i, 0]))


def _plot_plane(records: list[dict], baseline: dict | None, cost: str, path: str) -> None:
    fig, ax = figures.subplots(figsize=(6.4, 4.4))
    ax.scatter([r["costs"][cost] for r in records], [_score(r) for r in records], s=18,
               color="0.6", label="evaluated")
    front = [records[i] for i in _front_2d(records, cost)]
    ax.step([r["costs"][cost] for r in front], [_score(r) for r in front], where="post",
            color="tab:blue")
    ax.scatter([r["costs"][cost] for r in front], [_score(r) for r in front], s=30,
               color="tab:blue", label="front (this plane)")
    if baseline is not None:
        ax.scatter([baseline["costs"][cost]], [_score(baseline)], marker="*", s=160,
                   color="tab:red", label=f"default: {baseline['label']}", zorder=3)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(_no_labels())  # minor log ticks' labels overlap
    ax.set_xlabel("state size (numbers per sequence)" if cost == "state" else "parameters")
    ax.set_ylabel("MAD proxy score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    figures.save(fig, path, dpi=120)


def _no_labels():
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def _plot_generations(history: list[dict], path: str) -> None:
    fig, ax = figures.subplots(figsize=(5.4, 3.6))
    gens = [h["generation"] for h in history]
    ax.plot(gens, [h["best_score"] for h in history], marker="o", label="best")
    ax.plot(gens, [h["mean_score"] for h in history], marker=".", label="population mean")
    ax.set_xlabel("generation")
    ax.set_ylabel("MAD proxy score")
    ax.set_xticks(gens)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    figures.save(fig, path, dpi=120)


def baseline_position(baseline: dict, records: list[dict]) -> str:
    """One sentence: which evaluated genomes dominate the baseline (score >=, state <=,
    params <=, one strictly), or that none does."""
    b = np.array([-_score(baseline), baseline["costs"]["state"], baseline["costs"]["params"]])
    better = [r for r in records if r["key"] != baseline["key"] and nsga.dominates(
        np.array([-_score(r), r["costs"]["state"], r["costs"]["params"]]), b)]
    if not better:
        return ("No evaluated genome dominates it: it is on the front (none scores at least as "
                "well with no more state and no more parameters).")
    better.sort(key=lambda r: -_score(r))
    shown = "; ".join(f"`{r['label']}` ({_score(r):.3f}, state {r['costs']['state']:,}, "
                      f"params {r['costs']['params']:,})" for r in better[:3])
    return (f"{len(better)} evaluated genome(s) dominate it (at least its score with no more "
            f"state and parameters), e.g. {shown}.")


def write_report(workdir: str, result, *, config, log: Callable[[str], None] = print) -> dict:
    """Writes report.md, genomes.csv and the plots; returns their paths."""
    import pandas as pd

    searched = [result.records[k] for k in dict.fromkeys(
        k for h in result.history for k in h["offspring"])]
    baseline = result.records.get(result.baseline) if result.baseline else None
    tasks = list(config.tasks)
    front = sorted((result.records[k] for k in result.front), key=lambda r: -_score(r))
    columns = ["genome", "score", *tasks, "params", "state", "flops", "key"]
    paths = {"md": storage.join(workdir, "report.md"),
             "csv": storage.join(workdir, "genomes.csv")}
    everything = searched + ([baseline] if baseline is not None
                             and baseline["key"] not in {r["key"] for r in searched} else [])
    table = pd.DataFrame([dict(_row(r, tasks), baseline=r is baseline) for r in everything])
    storage.write_csv(paths["csv"], table.sort_values("score", ascending=False))
    plots = storage.join(workdir, "plots")
    _plot_plane(searched, baseline, "state", storage.join(plots, PLOTS[0]))
    _plot_plane(searched, baseline, "params", storage.join(plots, PLOTS[1]))
    _plot_generations(result.history, storage.join(plots, PLOTS[2]))
    paths["plots"] = [storage.join(plots, p) for p in PLOTS]

    is_mad = config.protocol_preset == "full" and len(tasks) == 6 and not config.train
    budgets = ", ".join(f"{k} {getattr(config, k):,}" for k in ("max_params", "max_state",
                                                                "max_flops")
                        if getattr(config, k) is not None) or "none"
    train = (" with " + ", ".join(f"{k}={v}" for k, v in sorted(config.train.items()))
             if config.train else "")
    lines = [
        "# Architecture search", "",
        f"Space: mixers {', '.join(config.mixers)}; channel mixers {', '.join(config.channels)}; "
        f"{config.min_blocks} to {config.max_blocks} blocks at width {config.dim}"
        f"{'; choices ' + config.choices if config.choices else ''}. Budgets: {budgets} "
        f"(state and FLOPs at sequence length {config.seq_len}).",
        f"Score: mean over {', '.join(tasks)} of the protocol preset "
        f"'{config.protocol_preset}'{train}"
        f"{'; grid ' + str([list(g) for g in config.grid]) if config.grid else ''}. "
        + ("These are MAD scores." if is_mad else
           "A proxy of the MAD score on a reduced budget: NOT MAD scores."),
        f"Evolution: population {config.population}, {len(result.history) - 1} generations, "
        f"seed {config.seed}; {len(searched)} genomes evaluated.", "",
        "## Pareto front (score up, state and parameters down)", "",
        _markdown([_row(r, tasks) for r in front], columns), ""]
    if baseline is not None:
        lines += ["## The default hybrid", "",
                  _markdown([_row(baseline, tasks)], columns), "",
                  baseline_position(baseline, searched), ""]
    lines += ["## Best per generation", "",
              _markdown([{"generation": h["generation"], "best score": h["best_score"],
                          "best genome": result.records[h["best"]]["label"],
                          "mean score": h["mean_score"], "front": len(h["front"]),
                          "new genomes": len(h["offspring"])} for h in result.history],
                        ["generation", "best score", "best genome", "mean score", "front",
                         "new genomes"]), "",
              "## Plots", "",
              *[f"![{p}](plots/{p})" for p in PLOTS], "",
              "Every genome evaluated: genomes.csv; each genome's genome.json and protocol "
              "results: genomes/<key>/.", ""]
    storage.write_text(paths["md"], "\n".join(lines))
    log(f"report: {paths['md']} (genomes.csv, plots/)")
    return paths

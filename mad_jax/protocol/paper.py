"""The MAD paper's score table, and our scores beside it.

`paper_scores.json` (next to this file) holds the per-task MAD scores of Poli et al. (2024) with
their sources. `compare` puts a sweep's scores (x 100) beside them for every cell, with the
difference, and the Spearman rank correlation of the architectures' means, each mean taken over
the tasks the sweep ran (so a sweep of three tasks is compared with the paper on those three).
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np
import pandas as pd

from mad_jax import tasks as tasks_lib
from mad_jax.protocol.scores import score_table, setting_scores

PAPER_FILE = os.path.join(os.path.dirname(__file__), "paper_scores.json")


def load_paper_scores(path: str = PAPER_FILE) -> dict:
    """The paper's table: {"rows": [{"key", "name", "approx", "scores": {task: x100}}], ...}."""
    with open(path) as f:
        return json.load(f)


def spearman(x, y) -> float:
    """Spearman's rank correlation (ties get average ranks); NaN for fewer than 2 pairs."""
    x, y = pd.Series(np.asarray(x, float)), pd.Series(np.asarray(y, float))
    if len(x) < 2 or x.nunique() < 2 or y.nunique() < 2:
        return float("nan")
    return float(x.rank().corr(y.rank()))


def compare(results, *, paper_keys: Mapping[str, str] | None = None,
            metric: str = "final_test_acc", paper: dict | None = None) -> dict:
    """Our scores beside the paper's.

    results: a results table holding one or more architectures.
    paper_keys: our arch name -> the paper row's key ("transformer", "hyena", ...); by default an
      arch whose name is a paper key maps to it. Architectures without a paper row are left out.
    Returns {"cells": DataFrame(arch, paper, task, ours, paper_score, diff, approx),
             "means": DataFrame(arch, paper, ours, paper_score, diff, tasks),
             "spearman": rank correlation of the means (NaN with fewer than 2 architectures)}.
    Scores are accuracy x 100, as the paper prints them.
    """
    paper = paper or load_paper_scores()
    rows = {r["key"]: r for r in paper["rows"]}
    table = score_table(results, metric=metric)
    ran = setting_scores(results, metric=metric).groupby(["arch", "task"])["setting"].nunique()
    keys = dict(paper_keys or {})
    cells, means = [], []
    for arch in table.index:
        key = keys.get(arch, arch if arch in rows else None)
        if key is None:
            continue
        if key not in rows:
            raise ValueError(f"arch {arch!r}: no paper row {key!r}; valid: {', '.join(rows)}")
        row = rows[key]
        tasks = [t for t in table.columns if t != "mean" and t in row["scores"]
                 and np.isfinite(table.loc[arch, t])]
        for task in tasks:
            ours = 100.0 * float(table.loc[arch, task])
            theirs = float(row["scores"][task])
            cells.append({"arch": arch, "paper": row["name"], "task": task, "ours": ours,
                          "paper_score": theirs, "diff": ours - theirs,
                          "approx": bool(row.get("approx", False)),
                          "settings": int(ran.get((arch, task), 0)),
                          "grid_settings": len(tasks_lib.settings(task))})
        if tasks:
            ours = 100.0 * float(np.mean([table.loc[arch, t] for t in tasks]))
            theirs = float(np.mean([row["scores"][t] for t in tasks]))
            means.append({"arch": arch, "paper": row["name"], "ours": ours,
                          "paper_score": theirs, "diff": ours - theirs, "tasks": len(tasks)})
    cells = pd.DataFrame(cells, columns=["arch", "paper", "task", "ours", "paper_score", "diff",
                                         "approx", "settings", "grid_settings"])
    means = pd.DataFrame(means, columns=["arch", "paper", "ours", "paper_score", "diff", "tasks"])
    rho = spearman(means["ours"], means["paper_score"]) if len(means) else float("nan")
    return {"cells": cells, "means": means, "spearman": rho}


def format_comparison(comparison: dict, paper: dict | None = None) -> str:
    """Markdown: one table per architecture-task cell and one of the means, with the sources."""
    paper = paper or load_paper_scores()
    cells, means = comparison["cells"], comparison["means"]
    if means.empty:
        return "(no architecture of this sweep has a row in the paper's table)"
    lines = ["| arch | paper row | task | ours (settings run) | paper (all settings) | "
             "ours - paper |", "|---|---|---|---|---|---|"]
    for c in cells.itertuples(index=False):
        mark = " (approx.)" if c.approx else ""
        lines.append(f"| {c.arch} | {c.paper} | {c.task} | {c.ours:.1f} ({c.settings}/"
                     f"{c.grid_settings}) | {c.paper_score:.1f}{mark} | {c.diff:+.1f} |")
    lines += ["", "| arch | paper row | tasks | mean (ours) | mean (paper, same tasks) | "
              "ours - paper |", "|---|---|---|---|---|---|"]
    for m in means.itertuples(index=False):
        lines.append(f"| {m.arch} | {m.paper} | {m.tasks} | {m.ours:.1f} | {m.paper_score:.1f} "
                     f"| {m.diff:+.1f} |")
    rho = comparison["spearman"]
    lines += ["", f"Spearman rank correlation of the means over {len(means)} architectures: "
              + ("n/a (needs 2 or more)" if not np.isfinite(rho) else f"{rho:+.2f}"), ""]
    if (cells["settings"] < cells["grid_settings"]).any():
        lines += ["Ours average only the settings this sweep ran (the paper's average every "
                  "setting of the task's grid), so those cells are not like for like.", ""]
    lines += ["Sources: " + "; ".join(f"{k}: {v}" for k, v in paper["sources"].items())]
    lines += [f"- {note}" for note in paper.get("notes", ())]
    return "\n".join(lines)

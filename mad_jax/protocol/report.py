"""The sweep report: score table (architectures x tasks), a bar chart of MAD scores, and accuracy
against each difficulty variable, as Markdown and HTML with matplotlib PNGs, in a local folder or
under a bucket URL (`mad_jax.storage`).

    workdir/report.md, workdir/report.html, workdir/plots/mad_scores.png,
    workdir/plots/difficulty_<task>.png
"""
from __future__ import annotations

import html
import json
import os
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mad_jax import figures, storage
from mad_jax.protocol import results_table
from mad_jax.protocol.presets import PRESETS
from mad_jax.protocol import paper as paper_lib
from mad_jax.protocol.scores import score_intervals, score_table, setting_scores


def presets_of(results: pd.DataFrame) -> list[str]:
    return [str(p) for p in dict.fromkeys(results.get("preset", pd.Series(dtype=object)).dropna())]


def mad_score_problems(results: pd.DataFrame) -> list[str]:
    """Why these results are not MAD scores (empty when they are): a preset other than full, a
    budget or grid changed from the protocol's (`is_mad_score` False), a task missing settings of
    its grid, or failed runs."""
    from mad_jax import tasks as tasks_lib

    presets = presets_of(results)
    if presets != ["full"]:
        names = ", ".join(presets) or "unknown"
        return [f"the {names} preset trains less than the MAD protocol "
                "(run with preset=full for MAD scores)"]
    problems = []
    if "is_mad_score" in results.columns and results["is_mad_score"].notna().any():
        flags = results["is_mad_score"].map(lambda v: str(v).strip().lower() in ("true", "1"))
        if not flags.all():
            problems.append("the budget or grid differs from the protocol's")
    short = []
    for task, group in results.groupby("task", sort=False):
        if task in tasks_lib.TASKS:
            have, want = group["setting"].nunique(), len(tasks_lib.settings(task))
            if have < want:
                short.append(f"{task} {have}/{want} settings")
    if short:
        problems.append("not every setting ran (" + ", ".join(short) + ")")
    if "status" in results.columns and (results["status"] == "failed").any():
        problems.append(f"{int((results['status'] == 'failed').sum())} run(s) failed")
    return problems


def preset_notice(results: pd.DataFrame) -> str:
    """One line saying whether these are MAD scores (the full protocol, unchanged and complete)
    or not, and why not."""
    problems = mad_score_problems(results)
    if not problems:
        return "Preset: full (the MAD protocol). These are MAD scores."
    names = ", ".join(presets_of(results)) or "unknown"
    return f"Preset: {names}. These are NOT MAD scores: {'; '.join(problems)}."


def failed_cells(results: pd.DataFrame) -> set[tuple[str, str]]:
    """(arch, task) pairs whose runs all failed: their score is no measurement."""
    if results.empty or "status" not in results.columns:
        return set()
    df = results.assign(arch=results["arch"].fillna("model") if "arch" in results.columns
                        else "model")
    return {(arch, task) for (arch, task), g in df.groupby(["arch", "task"], sort=False)
            if (g["status"] == "failed").all()}


def format_score_table(results: pd.DataFrame, *, metric: str = "final_test_acc",
                       digits: int = 3) -> str:
    """Markdown table of scores, one row per architecture, one column per task plus the mean.
    A task whose runs all failed shows `failed` (and its architecture's mean too)."""
    table = score_table(results, metric=metric)
    if table.empty:
        return "(no results)"
    failed = failed_cells(results)
    header = ["arch"] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arch, row in table.iterrows():
        arch_failed = any((arch, t) in failed for t in table.columns)
        cells = []
        for task, v in zip(table.columns, row.to_numpy(float)):
            if (arch, task) in failed or (task == "mean" and arch_failed):
                cells.append("failed")
            else:
                cells.append(f"{v:.{digits}f}" if np.isfinite(v) else "-")
        lines.append("| " + " | ".join([str(arch)] + cells) + " |")
    return "\n".join(lines)


def plot_scores(results: pd.DataFrame, path: str, *, metric: str = "final_test_acc") -> str:
    """Grouped bar chart: per task (and the mean), one bar per architecture."""
    table = score_table(results, metric=metric)
    archs, cols = list(table.index), list(table.columns)
    fig, ax = figures.subplots(
        figsize=(max(6.0, 1.3 * len(cols) * max(1, len(archs)) ** 0.5), 4.0))
    width = 0.8 / max(1, len(archs))
    x = np.arange(len(cols))
    for i, arch in enumerate(archs):
        ax.bar(x + (i - (len(archs) - 1) / 2) * width, table.loc[arch].to_numpy(float), width,
               label=str(arch))
    ax.set_xticks(x, cols, fontsize=8, rotation=25, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("MAD score" if not mad_score_problems(results) else
                  f"score ({', '.join(presets_of(results))} preset: not MAD scores)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    figures.save(fig, path, dpi=120)
    return path


def _difficulty_points(per_setting: pd.DataFrame, task: str):
    """{key: {arch: [(value, score), ...]}} including the baseline's value of each key."""
    rows = per_setting[per_setting["task"] == task]
    base = rows[rows["setting"] == "baseline"]
    out: dict[str, dict[str, list]] = {}
    for key in [k for k in dict.fromkeys(rows["difficulty_key"].dropna())]:
        out[key] = {}
        for arch in dict.fromkeys(rows["arch"]):
            pts = [(float(r.difficulty_value), r.score) for r in
                   rows[(rows["difficulty_key"] == key) & (rows["arch"] == arch)].itertuples()]
            for r in base[base["arch"] == arch].itertuples():
                params = json.loads(r.setting_params) if isinstance(r.setting_params, str) else {}
                if key in params:
                    pts.append((float(params[key]), r.score))
            out[key][arch] = sorted(pts)
    return out


def plot_difficulty(results: pd.DataFrame, task: str, path: str, *,
                    metric: str = "final_test_acc") -> str | None:
    """Accuracy against each difficulty variable of `task` (one panel per variable)."""
    per_setting = setting_scores(results, metric=metric)
    points = _difficulty_points(per_setting, task)
    if not points:
        return None
    import matplotlib.ticker
    fig, axes = figures.subplots(1, len(points), figsize=(3.3 * len(points), 3.0),
                                 squeeze=False)
    for ax, (key, by_arch) in zip(axes[0], points.items()):
        for arch, pts in by_arch.items():
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=str(arch))
        values = [v for pts in by_arch.values() for v, _ in pts]
        if values and min(values) > 0 and max(values) / min(values) >= 8:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel(key)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (best of grid)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(task, fontsize=10)
    fig.tight_layout()
    figures.save(fig, path, dpi=110)
    return path


def write_report(workdir: str, results: pd.DataFrame | None = None, *,
                 metric: str = "final_test_acc", title: str = "MAD sweep",
                 paper_keys: Mapping[str, str] | None = None) -> dict[str, str]:
    """Writes report.md, report.html and plots/*.png into `workdir` (a local folder or a URL
    such as gs://bucket/sweep); returns their paths.

    results: the combined results table (default: workdir/results.csv).
    paper_keys: our arch name -> row of the MAD paper's table (`protocol.paper`); if given, the
      report puts every score beside the paper's, with the rank correlation of the means.
    """
    if results is None:
        results = results_table.read(storage.join(workdir, results_table.RESULTS_FILE))
    if results.empty:
        raise ValueError(f"no results to report in {workdir}")
    plots_dir = storage.join(workdir, "plots")
    paths = {"scores_png": plot_scores(results, storage.join(plots_dir, "mad_scores.png"),
                                       metric=metric)}
    difficulty = {}
    for task in dict.fromkeys(results["task"]):
        p = plot_difficulty(results, task, storage.join(plots_dir, f"difficulty_{task}.png"),
                            metric=metric)
        if p:
            difficulty[task] = p
    per_setting = setting_scores(results, metric=metric)
    failed = results[results["status"] != "ok"]
    notice = preset_notice(results)
    presets = presets_of(results)
    description = "; ".join(f"{p}: {PRESETS[p].description}" for p in presets if p in PRESETS)

    select_on = str(per_setting["select_on"].iloc[0]) if len(per_setting) else "test"
    selection = ("the test set, as the reference does" if select_on == "test"
                 else "the held-out validation split (the score is that run's test accuracy)")
    metric_name = ("macro accuracy (per-class recall averaged over classes, the reference's "
                   "metric)" if metric.startswith("final_test_acc") and "micro" not in metric
                   else f"`{metric}`")
    md = [f"# {title}", "", f"**{notice}**", "", description, "",
          f"Score: {metric_name} of the best run of the (lr, wd) grid per setting, the best run "
          f"chosen on {selection}; averaged over each task's settings; `mean` averages the "
          "tasks.", "", "## Scores", "",
          format_score_table(results, metric=metric), "",
          "![scores](plots/mad_scores.png)", ""]
    intervals = score_intervals(results, metric=metric)
    if len(intervals) and intervals["seeds"].max() > 1:
        md += ["## Seeds", "", "Mean over seeds and 95% t-interval (the paper used one seed).",
               "", _markdown_table(intervals, ("arch", "task", "score", "low", "high",
                                               "seeds")), ""]
    comparison = None
    if paper_keys is not None:
        comparison = paper_lib.compare(results, paper_keys=paper_keys, metric=metric)
        md += ["## Beside the paper", "", "Accuracy x 100. The paper's numbers are MAD scores "
               "(full protocol); ours are only comparable when this sweep ran preset=full.", "",
               paper_lib.format_comparison(comparison), ""]
    if difficulty:
        md += ["## Accuracy against difficulty", ""]
        md += [f"![{t}](plots/{os.path.basename(p)})" for t, p in difficulty.items()] + [""]
    else:
        md += ["(No difficulty plots: this preset runs only the baseline of each task.)", ""]
    md += ["## Settings", "", _markdown_table(per_setting, (
        "arch", "task", "setting", "score", "learning_rate", "weight_decay", "runs", "failed")), ""]
    if not failed.empty:
        md += ["## Failed runs", "", _markdown_table(failed, (
            "arch", "task", "setting", "learning_rate", "weight_decay", "error")), ""]
    total_wall = results.groupby(["arch", "task", "setting"])["wall_time_s"].first().sum()
    md += [f"{len(results)} runs, {len(per_setting)} settings; training wall time "
           f"{total_wall / 60:.1f} min.", ""]
    paths["md"] = storage.join(workdir, "report.md")
    storage.write_text(paths["md"], "\n".join(md))

    body = [f"<h1>{html.escape(title)}</h1>", f"<p><b>{html.escape(notice)}</b></p>",
            f"<p>{html.escape(description)}</p>", "<h2>Scores</h2>",
            f"<p>Best run chosen on {html.escape(selection)}.</p>",
            score_table(results, metric=metric).to_html(float_format=lambda v: f"{v:.3f}"),
            '<p><img src="plots/mad_scores.png"></p>']
    if comparison is not None:
        body += ["<h2>Beside the paper</h2>",
                 comparison["cells"].to_html(index=False, float_format=lambda v: f"{v:.1f}"),
                 comparison["means"].to_html(index=False, float_format=lambda v: f"{v:.1f}"),
                 f"<p>Spearman rank correlation of the means: {comparison['spearman']:.2f}</p>"]
    if difficulty:
        body.append("<h2>Accuracy against difficulty</h2>")
        body += [f'<p><img src="plots/{os.path.basename(p)}"></p>' for p in difficulty.values()]
    body += ["<h2>Settings</h2>", per_setting[[c for c in (
        "arch", "task", "setting", "score", "learning_rate", "weight_decay", "runs", "failed")
        if c in per_setting.columns]].to_html(index=False, float_format=lambda v: f"{v:.4g}")]
    if not failed.empty:
        body += ["<h2>Failed runs</h2>", failed[["arch", "task", "setting", "learning_rate",
                                                 "weight_decay", "error"]].to_html(index=False)]
    paths["html"] = storage.join(workdir, "report.html")
    storage.write_text(paths["html"], "<!doctype html><html><head><meta charset='utf-8'><title>"
                       f"{html.escape(title)}</title></head><body>\n" + "\n".join(body)
                       + "\n</body></html>\n")
    paths.update({f"difficulty_{t}": p for t, p in difficulty.items()})
    return paths


def _markdown_table(df: pd.DataFrame, columns: Sequence[str]) -> str:
    columns = [c for c in columns if c in df.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in df[columns].itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append("-" if not np.isfinite(v) else f"{v:.4g}")
            else:
                cells.append(str(v).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

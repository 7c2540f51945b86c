"""MAD scores from a results table.

A setting's score is the best test accuracy among its runs (the hyperparameter grid); a task's
MAD score is the mean of its settings' scores; "mean" is the mean over tasks. As in the reference
implementation, a run's test accuracy is its final one (`final_test_acc`: at the end of training,
or where it stopped after reaching the stopping threshold); `metric="best_test_acc"` uses the
best accuracy seen during training instead. Failed runs (non-finite loss) do not count; a setting
whose runs all failed scores 0.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def _as_frame(results) -> pd.DataFrame:
    if isinstance(results, pd.DataFrame):
        return results
    return pd.DataFrame(list(results))


def setting_scores(results, *, metric: str = "final_test_acc") -> pd.DataFrame:
    """One row per (arch, task, setting): the best `metric` over the grid and its run."""
    df = _as_frame(results).copy()
    if "arch" not in df.columns:
        df["arch"] = "model"
    df["arch"] = df["arch"].fillna("model")
    ok = df["status"].fillna("ok").eq("ok") if "status" in df.columns else True
    df["_score"] = np.where(ok, pd.to_numeric(df[metric], errors="coerce"), np.nan)
    rows = []
    for (arch, task, setting), group in df.groupby(["arch", "task", "setting"], sort=False):
        scores = group["_score"]
        best = group.loc[scores.idxmax()] if scores.notna().any() else None
        row = {"arch": arch, "task": task, "setting": setting,
               "score": float(scores.max()) if best is not None else 0.0,
               "learning_rate": best["learning_rate"] if best is not None else np.nan,
               "weight_decay": best["weight_decay"] if best is not None else np.nan,
               "runs": len(group), "failed": int((~group["_score"].notna()).sum())}
        for extra in ("difficulty_key", "difficulty_value", "preset", "setting_params"):
            if extra in group.columns:
                row[extra] = group[extra].iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def score_table(results, *, metric: str = "final_test_acc") -> pd.DataFrame:
    """Architectures x tasks table of MAD scores, with a "mean" column (tasks in table order)."""
    per_setting = setting_scores(results, metric=metric)
    if per_setting.empty:
        return pd.DataFrame()
    table = per_setting.pivot_table(index="arch", columns="task", values="score", aggfunc="mean",
                                    sort=False)
    table = table[list(dict.fromkeys(per_setting["task"]))]
    table["mean"] = table.mean(axis=1)
    return table.loc[list(dict.fromkeys(per_setting["arch"]))]


def scores(results, *, metric: str = "final_test_acc", arch: str | None = None) -> dict[str, float]:
    """MAD score per task, and "mean" over tasks, for one architecture.

    results: a results table (DataFrame or list of row dicts) with columns task, setting,
      learning_rate, weight_decay, status and `metric` (and arch, if it holds several).
    arch: which architecture, when the table holds several (ValueError if ambiguous).
    """
    df = _as_frame(results)
    if df.empty:
        raise ValueError("scores() needs at least one result row")
    if "arch" in df.columns and df["arch"].notna().any():
        archs = list(dict.fromkeys(df["arch"].dropna()))
        if arch is None and len(archs) > 1:
            raise ValueError(f"results hold several architectures {archs}; pass arch=")
        if arch is not None:
            if arch not in archs:
                raise ValueError(f"no results for arch {arch!r}; have {archs}")
            df = df[df["arch"] == arch]
    per_setting = setting_scores(df, metric=metric)
    out = {task: float(group["score"].mean())
           for task, group in per_setting.groupby("task", sort=False)}
    out["mean"] = float(np.mean(list(out.values())))
    return out

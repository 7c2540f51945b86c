"""MAD scores from a results table.

A setting's score is the test accuracy of its best run over the hyperparameter grid; a task's MAD
score is the mean of its settings' scores; "mean" is the mean over tasks. As in the reference
(`mad/analysis.py`), accuracy is macro accuracy (`mad_jax.training.losses.macro_accuracy`) and a
run's accuracy is its final one (`final_test_acc`: at the end of training, or where it stopped
after reaching the stopping threshold). `metric="final_test_acc_micro"` scores per-token accuracy
instead, `metric="best_test_acc"` the best accuracy seen during training.

Selection: the reference picks each setting's best run on the test set it reports
(`select_on="test"`). `select_on="validation"` picks it on the held-out validation split
(`final_val_acc`) and reports that run's test accuracy. By default the rows' own `select_on`
column decides (what the protocol was run with).

Seeds: with several seeds (`protocol.run(..., seeds=N)`), the best run is picked per seed, each
seed gets its task scores, and `scores()` reports their mean; `score_intervals()` the mean and a
95% t-interval over seeds. Failed runs (non-finite loss) do not count; a setting whose runs all
failed scores 0.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("final_test_acc", "final_test_acc_micro", "best_test_acc")
SELECT_ON = ("test", "validation")
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (1.96 beyond).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def _as_frame(results) -> pd.DataFrame:
    if isinstance(results, pd.DataFrame):
        return results
    return pd.DataFrame(list(results))


def _selection_column(metric: str, select_on: str) -> str:
    if select_on == "test":
        return metric
    return "final_val_acc_micro" if metric.endswith("_micro") else "final_val_acc"


def _select_on(df: pd.DataFrame, select_on: str | None) -> str:
    if select_on is None:
        values = (set(df["select_on"].dropna()) if "select_on" in df.columns else set()) or {"test"}
        if len(values) > 1:
            raise ValueError(f"results were selected on {sorted(values)}; pass select_on=")
        select_on = values.pop()
    if select_on not in SELECT_ON:
        raise ValueError(f"unknown select_on {select_on!r}; valid: {', '.join(SELECT_ON)}")
    return select_on


def setting_scores(results, *, metric: str = "final_test_acc",
                   select_on: str | None = None) -> pd.DataFrame:
    """One row per (arch, task, setting, seed): the selected run's `metric` and its (lr, wd)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    df = _as_frame(results).copy()
    select_on = _select_on(df, select_on)
    chooser = _selection_column(metric, select_on)
    if chooser not in df.columns:
        raise ValueError(f"results have no {chooser!r} column to select runs on; they were not "
                         f"run with select_on={select_on!r}")
    if "arch" not in df.columns:
        df["arch"] = "model"
    df["arch"] = df["arch"].fillna("model")
    if "seed" not in df.columns:
        df["seed"] = 0
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(0).astype(int)
    ok = df["status"].fillna("ok").eq("ok") if "status" in df.columns else True
    df["_score"] = np.where(ok, pd.to_numeric(df[metric], errors="coerce"), np.nan)
    df["_choose"] = np.where(ok & df["_score"].notna(),
                             pd.to_numeric(df[chooser], errors="coerce"), np.nan)
    rows = []
    for (arch, task, setting, seed), group in df.groupby(["arch", "task", "setting", "seed"],
                                                         sort=False):
        best = group.loc[group["_choose"].idxmax()] if group["_choose"].notna().any() else None
        row = {"arch": arch, "task": task, "setting": setting, "seed": seed,
               "score": float(best["_score"]) if best is not None else 0.0,
               "learning_rate": best["learning_rate"] if best is not None else np.nan,
               "weight_decay": best["weight_decay"] if best is not None else np.nan,
               "runs": len(group), "failed": int(group["_score"].isna().sum()),
               "select_on": select_on}
        for extra in ("difficulty_key", "difficulty_value", "preset", "setting_params"):
            if extra in group.columns:
                row[extra] = group[extra].iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def _task_scores_per_seed(per_setting: pd.DataFrame) -> pd.DataFrame:
    """(arch, task, seed) -> mean over the task's settings."""
    return (per_setting.groupby(["arch", "task", "seed"], sort=False)["score"].mean()
            .reset_index())


def score_table(results, *, metric: str = "final_test_acc",
                select_on: str | None = None) -> pd.DataFrame:
    """Architectures x tasks table of MAD scores (mean over seeds), with a "mean" column."""
    per_setting = setting_scores(results, metric=metric, select_on=select_on)
    if per_setting.empty:
        return pd.DataFrame()
    per_seed = _task_scores_per_seed(per_setting)
    table = per_seed.pivot_table(index="arch", columns="task", values="score", aggfunc="mean",
                                 sort=False)
    table = table[list(dict.fromkeys(per_setting["task"]))]
    table["mean"] = table.mean(axis=1)
    return table.loc[list(dict.fromkeys(per_setting["arch"]))]


def _only_arch(df: pd.DataFrame, arch: str | None) -> pd.DataFrame:
    if "arch" in df.columns and df["arch"].notna().any():
        archs = list(dict.fromkeys(df["arch"].dropna()))
        if arch is None and len(archs) > 1:
            raise ValueError(f"results hold several architectures {archs}; pass arch=")
        if arch is not None:
            if arch not in archs:
                raise ValueError(f"no results for arch {arch!r}; have {archs}")
            df = df[df["arch"] == arch]
    return df


def scores(results, *, metric: str = "final_test_acc", arch: str | None = None,
           select_on: str | None = None) -> dict[str, float]:
    """MAD score per task, and "mean" over tasks, for one architecture (mean over seeds).

    results: a results table (DataFrame or list of row dicts) with columns task, setting,
      learning_rate, weight_decay, status and `metric` (and arch, if it holds several; seed, if
      several seeds were trained).
    metric: "final_test_acc" (macro, the reference's), "final_test_acc_micro" or "best_test_acc".
    arch: which architecture, when the table holds several (ValueError if ambiguous).
    select_on: "test" or "validation" (default: what the rows were run with).
    """
    df = _as_frame(results)
    if df.empty:
        raise ValueError("scores() needs at least one result row")
    df = _only_arch(df, arch)
    per_seed = _task_scores_per_seed(setting_scores(df, metric=metric, select_on=select_on))
    out = {task: float(group["score"].mean())
           for task, group in per_seed.groupby("task", sort=False)}
    out["mean"] = float(np.mean(list(out.values())))
    return out


def t_interval(values) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student-t interval of the mean (low = high = mean for one)."""
    x = np.asarray(values, float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean, mean
    t = _T975[len(x) - 2] if len(x) - 1 <= len(_T975) else 1.96
    half = t * float(x.std(ddof=1)) / np.sqrt(len(x))
    return mean, mean - half, mean + half


def score_intervals(results, *, metric: str = "final_test_acc",
                    select_on: str | None = None) -> pd.DataFrame:
    """One row per (arch, task) and (arch, "mean"): mean score over seeds, the 95% t-interval
    (low, high) and the number of seeds. The "mean" row's interval is over the seeds' means."""
    per_seed = _task_scores_per_seed(setting_scores(results, metric=metric, select_on=select_on))
    rows = []
    for arch, group in per_seed.groupby("arch", sort=False):
        for task, by_task in group.groupby("task", sort=False):
            mean, low, high = t_interval(by_task["score"])
            rows.append({"arch": arch, "task": task, "score": mean, "low": low, "high": high,
                         "seeds": len(by_task)})
        # A seed's mean over tasks: only seeds that have every task count.
        wide = group.pivot_table(index="seed", columns="task", values="score").dropna()
        if len(wide):
            mean, low, high = t_interval(wide.mean(axis=1))
            rows.append({"arch": arch, "task": "mean", "score": mean, "low": low, "high": high,
                         "seeds": len(wide)})
    return pd.DataFrame(rows, columns=["arch", "task", "score", "low", "high", "seeds"])

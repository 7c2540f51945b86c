"""The results table: one row per run, a CSV file rewritten atomically after every setting.

Columns (in this order; `arch` names the architecture, `preset` the protocol preset that produced
the row, so a smoke score is never mistaken for a MAD score; `seed` the run's init seed; accuracies
are macro (the reference's metric) unless they end in `_micro`; `final_val_acc*` are filled when
the protocol selected runs on the validation split, which `select_on` records):
"""
from __future__ import annotations

import io
import json
import math
import os
from typing import Iterable, Mapping

import pandas as pd

from mad_jax.training.io import atomic_write_text

COLUMNS = (
    "arch", "preset", "task", "setting", "difficulty_key", "difficulty_value",
    "learning_rate", "weight_decay", "seed", "status", "final_test_acc", "final_test_acc_micro",
    "best_test_acc", "best_step", "test_loss", "final_val_acc", "final_val_acc_micro",
    "select_on", "final_train_loss", "steps", "total_steps", "wall_time_s", "compile_time_s",
    "params", "grid_size", "train_examples", "test_examples", "setting_params", "error",
)
__doc__ += "\n    " + ", ".join(COLUMNS) + "\n"

RESULTS_FILE = "results.csv"
KEY = ("arch", "task", "setting", "learning_rate", "weight_decay", "seed")


def empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})


def make_row(**fields) -> dict:
    """A row with every column (missing ones empty); setting_params is stored as JSON text."""
    row = {c: fields.get(c) for c in COLUMNS}
    unknown = sorted(set(fields) - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown result columns {unknown}")
    if isinstance(row["setting_params"], Mapping):
        row["setting_params"] = json.dumps(dict(row["setting_params"]), sort_keys=True)
    return row


def read(path: str | os.PathLike) -> pd.DataFrame:
    """Reads a results CSV (a missing file is an empty table)."""
    if not os.path.exists(path):
        return empty()
    df = pd.read_csv(path, keep_default_na=True)
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    for c in ("setting", "difficulty_key", "error", "status", "arch", "preset", "task",
              "select_on"):
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    return df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]]


def write(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Writes the table atomically (temporary file + os.replace)."""
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


def upsert(df: pd.DataFrame, rows: Iterable[Mapping]) -> pd.DataFrame:
    """Adds rows, replacing earlier rows with the same (arch, task, setting, lr, wd, seed)."""
    new = pd.DataFrame([make_row(**dict(r)) for r in rows], columns=list(COLUMNS))
    if new.empty:
        return df
    if df.empty:
        return new.reset_index(drop=True)
    key_new = set(_keys(new))
    keep = [k not in key_new for k in _keys(df)]
    return pd.concat([df[keep], new], ignore_index=True)


def _keys(df: pd.DataFrame):
    for row in df[list(KEY)].itertuples(index=False):
        arch, task, setting, lr, wd, seed = row
        yield key(arch, task, setting, lr, wd, seed)


def _round(x) -> float:
    x = float(x)
    return x if math.isnan(x) else float(f"{x:.6g}")


def done_keys(df: pd.DataFrame) -> set:
    """Keys (arch, task, setting, lr, wd, seed) of runs that finished (ok or failed: never
    redone)."""
    if df.empty:
        return set()
    finished = df[df["status"].isin(["ok", "failed"])]
    return set(_keys(finished))


def key(arch: str, task: str, setting: str, lr: float, wd: float, seed) -> tuple:
    seed = -1 if seed is None or (isinstance(seed, float) and math.isnan(seed)) else int(seed)
    return (arch, task, setting, _round(lr), _round(wd), seed)

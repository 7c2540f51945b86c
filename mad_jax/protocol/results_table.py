"""The results table: one row per run, a CSV file (a local path or a bucket URL,
`mad_jax.storage`) rewritten atomically after every setting.

Columns (in this order; `arch` names the architecture, `preset` the protocol preset that produced
the row, so a smoke score is never mistaken for a MAD score; `seed` the run's init seed; accuracies
are macro (the reference's metric) unless they end in `_micro`; `final_val_acc*` are filled when
the protocol selected runs on the validation split, which `select_on` records; `is_mad_score`
says whether the run's preset, budget and grid are the MAD protocol's; `fingerprint` is the hash of
the run's identity, `mad_jax.protocol.fingerprint`; `compile_time_s` the seconds its group's
programs took to compile (initial parameters, state create, train step and evaluation, shared by
the runs of one program; near 0 when this process compiled them before, the tracing alone when
the persistent compilation cache holds them), beside `wall_time_s`, its training and evaluation
after that):
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from mad_jax import storage

COLUMNS = (
    "arch", "preset", "task", "setting", "difficulty_key", "difficulty_value",
    "learning_rate", "weight_decay", "seed", "status", "final_test_acc", "final_test_acc_micro",
    "best_test_acc", "best_step", "test_loss", "final_val_acc", "final_val_acc_micro",
    "select_on", "final_train_loss", "steps", "total_steps", "wall_time_s", "compile_time_s",
    "params", "grid_size", "train_examples", "test_examples", "setting_params", "error",
    "is_mad_score", "fingerprint",
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


class ResultsError(ValueError):
    """A results file that cannot be trusted (truncated, malformed, missing columns)."""


# Columns every row must fill, and the ones an ok row must fill with a number (a protocol row,
# one with a preset, fills all three; rows written by hand need only the accuracy).
REQUIRED = ("arch", "task", "setting", "learning_rate", "weight_decay", "status")
REQUIRED_OK = ("final_test_acc", "steps", "params")


def read(path: str | os.PathLike) -> pd.DataFrame:
    """Reads a results CSV (a missing file is an empty table).

    Raises ResultsError naming the problem if the file is damaged: unreadable, a header without
    the key columns, a row with an empty key or status, an unknown status, or an ok row whose
    accuracy, steps or parameter count is not a number (a row cut short).
    """
    if not storage.exists(path):
        return empty()
    try:
        df = storage.read_csv(path, keep_default_na=True, dtype={"fingerprint": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path} is damaged ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:120]})") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ResultsError(f"{path} is damaged: no column(s) {', '.join(missing)}")
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    for i, row in enumerate(df.itertuples(index=False), start=2):  # line 1 is the header
        fields = row._asdict()
        empty_key = [c for c in REQUIRED if pd.isna(fields[c])]
        if empty_key:
            raise ResultsError(f"{path} is damaged: line {i} has no {', '.join(empty_key)}")
        if fields["status"] not in ("ok", "failed"):
            raise ResultsError(f"{path} is damaged: line {i} has status {fields['status']!r}")
        fp = fields.get("fingerprint")
        if not pd.isna(fp) and not re.fullmatch(r"[0-9a-f]{16}", str(fp)):
            raise ResultsError(f"{path} is damaged: line {i} has fingerprint {fp!r}")
        if fields["status"] == "ok":
            needed = REQUIRED_OK if not pd.isna(fields["preset"]) else REQUIRED_OK[:1]
            bad = [c for c in needed
                   if not np.isfinite(pd.to_numeric(fields[c], errors="coerce"))]
            if bad:
                raise ResultsError(f"{path} is damaged: line {i} (an ok run) has no number in "
                                   f"{', '.join(bad)}")
    for c in ("setting", "difficulty_key", "error", "status", "arch", "preset", "task",
              "select_on", "fingerprint"):
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    return df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]]


def rows_from_result_files(runs_dir: str | os.PathLike) -> list[dict]:
    """The rows stored in every `<runs_dir>/<task>/<setting>/result.json` (what a damaged
    results.csv is rebuilt from); files written before rows were stored are skipped."""
    rows = []
    for name in storage.list_files(runs_dir):
        parts = name.split("/")
        if len(parts) != 3 or parts[2] != "result.json":
            continue
        try:
            rows.extend(storage.read_json(storage.join(runs_dir, name)).get("rows", []))
        except (OSError, ValueError):
            continue  # a damaged result.json: its setting is trained again
    return rows


def write(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Writes the table atomically (`mad_jax.storage.write_csv`)."""
    storage.write_csv(path, df)


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


def round_value(x) -> float:
    """A learning rate or weight decay as keys hold it (6 significant digits)."""
    x = float(x)
    return x if math.isnan(x) else float(f"{x:.6g}")


def rows_by_key(df: pd.DataFrame) -> dict:
    """{key: row as a dict} of every row."""
    if df.empty:
        return {}
    return {k: row for k, row in zip(_keys(df), df.to_dict("records"))}


def done_keys(df: pd.DataFrame, *, include_failed: bool = True) -> set:
    """Keys (arch, task, setting, lr, wd, seed) of runs not to train again: the ok ones, and the
    failed ones too when include_failed."""
    if df.empty:
        return set()
    finished = df[df["status"].isin(["ok", "failed"] if include_failed else ["ok"])]
    return set(_keys(finished))


def failed_keys(df: pd.DataFrame) -> set:
    """Keys of runs recorded as failed."""
    if df.empty:
        return set()
    return set(_keys(df[df["status"] == "failed"]))


def key(arch: str, task: str, setting: str, lr: float, wd: float, seed) -> tuple:
    seed = -1 if seed is None or (isinstance(seed, float) and math.isnan(seed)) else int(seed)
    return (arch, task, setting, round_value(lr), round_value(wd), seed)

"""Per-run metrics: JSON lines (`metrics.jsonl`) and TensorBoard event files, side by side, in a
local folder or under a bucket URL (`mad_jax.storage`)."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

from mad_jax import storage
from mad_jax.training.tensorboard import EventFileWriter

METRICS_FILE = "metrics.jsonl"


def _clean(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None  # JSON has no NaN


class MetricsWriter:
    """Writes one record per call to `run_dir/metrics.jsonl` and to a TensorBoard event file.

    A record is `{"step": int, "wall_time": float, <tag>: float, ...}` with tags like
    "train/loss", "test/accuracy". With `resume_step`, records of later steps (written after the
    checkpoint the run resumes from) are dropped from the JSON lines file and TensorBoard is told
    to drop them too, so a resumed run's logs read as if it had never stopped.
    """

    def __init__(self, run_dir: str | os.PathLike, *, resume_step: int | None = None,
                 tensorboard: bool = True):
        self.run_dir = os.fspath(run_dir)
        self.path = storage.join(self.run_dir, METRICS_FILE)
        if resume_step is None:
            storage.remove(self.path)
        elif storage.exists(self.path):
            kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
            storage.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._f = storage.AppendFile(self.path)
        self._tb = (EventFileWriter(self.run_dir, start_step=resume_step) if tensorboard else None)

    def write(self, step: int, values: Mapping[str, float]) -> None:
        now = time.time()
        record = {"step": int(step), "wall_time": now}
        record.update({k: _clean(v) for k, v in values.items()})
        self._f.write((json.dumps(record) + "\n").encode())
        if self._tb is not None:
            self._tb.scalars(int(step), {k: float(v) for k, v in values.items()}, wall_time=now)

    def flush(self) -> None:
        self._f.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a metrics.jsonl file (a torn last line from a killed process is skipped)."""
    records = []
    for line in storage.read_text(path).splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records

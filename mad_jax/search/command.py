"""`run_from_config`: the search from a sweep config of `kind = "search"`
(experiments/configs/search.py), for the one command line:

    python -m experiments.sweep --config=experiments/configs/search.py:preset=cpu

Fields left unset (None) take the preset's value, then SearchConfig's default; `train` fields
add to the preset's training overrides (a budget given one way replaces the preset's).
Exit statuses: 0 done; 1 bad input (one line, before anything trains). A genome whose runs
fail (a non-finite loss, a crash) is a result, not an error: it scores 0 on those settings, is
kept as it is (never retried), and the log names it.
SIGINT / SIGTERM propagate (`training.signals.Interrupted`): run the same command to resume.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable

from mad_jax.search import presets
from mad_jax.search.errors import SearchError

EXIT_BAD_INPUT = 1
_NOT_FIELDS = ("kind", "preset", "workdir", "report", "print_config", "distributed")


def config_fields(config) -> tuple[str, str, dict[str, Any]]:
    """(preset, workdir, SearchConfig fields set) of a search ConfigDict."""
    from mad_jax.training.config import BUDGETS

    given = {k: v for k, v in config.to_dict().items() if k not in _NOT_FIELDS}
    preset = config.get("preset") or "cpu"
    train_given = {k: v for k, v in (given.pop("train", None) or {}).items() if v is not None}
    if train_given:
        train = dict(presets.PRESETS.get(preset, {}).get("train", {}))
        for family in BUDGETS:  # a budget set on the command line replaces the preset's
            if any(k.startswith(family + "_") for k in train_given):
                train = {k: v for k, v in train.items() if not k.startswith(family + "_")}
        given["train"] = {**train, **train_given}
    workdir = config.get("workdir") or f"workdir/search/{preset}"
    return preset, workdir, {k: v for k, v in given.items() if v is not None}


def run_from_config(config, log: Callable[[str], None] = print) -> int:
    """Runs (or resumes) the search a `kind = "search"` config describes; returns the exit
    status. Bad input prints one line ("error: ...") and returns 1."""
    from mad_jax.search.run import run

    try:
        preset, workdir, fields = config_fields(config)
        resolved = presets.resolve(preset, **fields)
        if config.get("print_config"):
            print(f"preset: {preset}\nworkdir: {workdir}")
            for key, value in dataclasses.asdict(resolved).items():
                print(f"{key}: {value}")
            return 0
        result = run(workdir, config=resolved, report=bool(config.get("report", True)),
                     log=log)
    except (SearchError, ValueError) as e:  # ProtocolError is a ValueError
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    failed = [r["label"] for r in result.records.values()
              if (r.get("evaluation") or {}).get("failed_runs")]
    if failed:
        log(f"note: runs of {len(failed)} genome(s) failed and score 0 there (e.g. "
            f"{failed[0]}); their errors are in {workdir}/genomes/<key>/")
    return 0

"""`run`: every setting of every task x the hyperparameter grid -> a results table, one row per
run.

Layout of `out_dir` (one architecture):

    out_dir/protocol.json                       preset, seed, grid, arch: checked on every restart
    out_dir/results.csv                         one row per finished run (rewritten atomically)
    out_dir/runs/<task>/<setting>/result.json   the setting's runs with loss and accuracy curves
    out_dir/runs/<task>/<setting>/<lr=..,wd=..>/metrics.jsonl + events.out.tfevents.*
    out_dir/runs/<task>/<setting>/checkpoints/  orbax checkpoints while the setting trains

A finished run (a row in results.csv, ok or failed) is never trained again; a setting killed
mid-way resumes from its last checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

import jax
import pandas as pd

from mad_jax.protocol import results_table
from mad_jax.protocol.presets import Preset, get_preset
from mad_jax.protocol.progress import Progress, format_duration
from mad_jax.training.config import TrainConfig, to_steps
from mad_jax.training.hparam_grid import DEFAULT_GRID
from mad_jax.training.io import atomic_write_json
from mad_jax.training.train import fit, load_task_data, model_max_length

PROTOCOL_FILE = "protocol.json"


class ProtocolError(ValueError):
    """The protocol cannot start or go on (bad names, unusable out_dir, mismatched workdir)."""


def check_tasks(tasks: Sequence[str] | str | None) -> list[str]:
    """Task names (all six if None); a comma-separated string is accepted."""
    from mad_jax import tasks as tasks_lib

    if tasks is None or tasks == "" or tasks == "all":
        return list(tasks_lib.TASKS)
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in tasks_lib.TASKS]
    if unknown:
        raise ProtocolError(f"unknown task(s) {', '.join(map(repr, unknown))}; "
                            f"valid tasks: {', '.join(tasks_lib.TASKS)}")
    return list(dict.fromkeys(tasks))


def check_writable(out_dir: str) -> None:
    """Creates out_dir and checks a file can be written there (ProtocolError if not)."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ProtocolError(f"workdir {out_dir!r} is not writable: {e.strerror or e}") from None


def plan(tasks: Sequence[str], preset: Preset) -> list[tuple[str, dict, str]]:
    """(task, setting, setting name) of every setting the preset runs, in grid order."""
    from mad_jax import tasks as tasks_lib

    out = []
    for task in tasks:
        all_settings = tasks_lib.settings(task)
        chosen = all_settings if preset.settings == "all" else all_settings[:1]
        out.extend((task, s, tasks_lib.setting_name(task, s)) for s in chosen)
    return out


def train_config(preset: Preset, *, seed: int = 0,
                 overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The preset's training config, with the seed and any user overrides applied."""
    cfg = dict(preset.train)
    cfg.update({"seed": seed, "data_seed": seed})
    for k, v in (overrides or {}).items():
        if v is not None:
            for family in ("train", "eval_every", "checkpoint_every"):
                if k.startswith(family + "_") and k[len(family) + 1:] in ("steps", "epochs",
                                                                          "examples"):
                    for unit in ("steps", "epochs", "examples"):
                        cfg.pop(f"{family}_{unit}", None)
            cfg[k] = v
    return TrainConfig.from_any(cfg)


def _changed_fields(old: dict, new: dict) -> list[str]:
    """'field: old -> new' for every field of the protocol record that differs (train fields by
    their own name)."""
    changes = []
    for k in ("preset", "seed"):
        if old.get(k) != new[k]:
            changes.append(f"{k}: {old.get(k)!r} -> {new[k]!r}")
    old_train, new_train = old.get("train") or {}, new["train"]
    for k in sorted(set(old_train) | set(new_train)):
        if old_train.get(k) != new_train.get(k):
            changes.append(f"train.{k}: {old_train.get(k)!r} -> {new_train.get(k)!r}")
    return changes


def _check_protocol_file(out_dir: str, record: dict) -> None:
    path = os.path.join(out_dir, PROTOCOL_FILE)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        changes = _changed_fields(old, record)
        if changes:
            shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more"
                                              if len(changes) > 3 else "")
            raise ProtocolError(
                f"{out_dir} holds results of another protocol ({shown}); results of different "
                "protocols must not mix: use another workdir, or delete that one to start over")
    if _writes():
        atomic_write_json(path, record)


def _writes() -> bool:
    """Only process 0 of a multi-host job writes results (every process computes them)."""
    return jax.process_index() == 0


def run(model_fn: Callable, out_dir: str, *, tasks: Sequence[str] | str | None = None,
        grid: Sequence[tuple[float, float]] | None = None, preset: str | Preset = "full",
        arch: str | None = None, seed: int = 0, seeds: int = 1,
        train_overrides: Mapping[str, Any] | None = None, retry_failed: bool = True,
        cache_dir: str | None = None, progress: bool = True, progress_every_s: float = 10.0,
        log: Callable[[str], None] = print) -> pd.DataFrame:
    """Runs the MAD protocol for one architecture and returns the results table (one row per run).

    model_fn(task, vocab_size, max_length) -> flax Module (the user's architecture).
    out_dir: where results, per-run metrics and checkpoints go (layout in the module docstring).
    tasks: task names (default: all six). grid: (lr, wd) pairs (default: the preset's grid:
      DEFAULT_GRID, the protocol's 3 x 2, for "full" and "smoke"; one run for "quick").
    preset: "full" (the paper's protocol: 66 settings x 6 runs, 200 epochs), "quick" or "smoke"
      (see mad_jax.protocol.PRESETS); every row records its preset.
    arch: the name written in the `arch` column (default: model_fn's __name__).
    seed: the data seed and the first init seed. seeds: how many init seeds (seed, seed + 1, ...)
      train every (lr, wd) run, in the same program; `scores` averages them and
      `score_intervals` gives 95% intervals over them.
    train_overrides: TrainConfig fields that override the preset's (e.g. {"train_steps": 50},
      {"select_on": "validation"} to pick each setting's best run on a held-out split).
    retry_failed: runs recorded as failed (a crash, a non-finite loss) are trained again
      (default); False keeps them as they are. Finished ok runs are never redone.
    progress: print progress lines, at most one per `progress_every_s` seconds per setting.
    """
    preset = get_preset(preset)
    tasks = check_tasks(tasks)
    grid = tuple((float(lr), float(wd)) for lr, wd in (grid or preset.grid or DEFAULT_GRID))
    arch = arch or getattr(model_fn, "__name__", "model")
    out_dir = os.fspath(out_dir)
    check_writable(out_dir)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ProtocolError(f"seeds must be a positive integer, got {seeds!r}")
    cfg = train_config(preset, seed=seed, overrides=train_overrides)
    if seeds > 1:
        cfg = dataclasses.replace(cfg, seeds=tuple(range(seed, seed + seeds)))
    # What the results depend on; the devices (mesh) do not count: a sweep may resume elsewhere.
    # Seeds may be added to a finished sweep: rows are keyed by seed.
    train_record = {k: v for k, v in dataclasses.asdict(dataclasses.replace(
        cfg, grid=None, seeds=None)).items() if k not in ("mesh", "sharding_rules", "dcn_mesh")}
    _check_protocol_file(out_dir, {
        "preset": preset.name, "seed": seed, "seeds": seeds, "arch": arch,
        "train": json.loads(json.dumps(train_record)),
        "grid": [list(g) for g in grid], "is_mad_score": preset.is_mad})
    results_path = os.path.join(out_dir, results_table.RESULTS_FILE)
    results = _read_results(results_path, out_dir, log)
    done = results_table.done_keys(results, include_failed=not retry_failed)
    failed_before = len(results_table.failed_keys(results)) if retry_failed else 0
    if failed_before:
        log(f"{failed_before} failed run(s) in {results_path} will be trained again "
            "(retry_failed=False keeps them)")

    settings = plan(tasks, preset)
    work = []
    for task, setting, name in settings:
        n_train = setting["num_train_examples"]
        if cfg.max_train_examples:
            n_train = min(n_train, cfg.max_train_examples)
        steps = to_steps(cfg, "train", num_train_examples=n_train, batch_size=cfg.batch_size)
        work.append(steps * setting["seq_len"])
    meter = Progress(sum(work), every_s=progress_every_s,
                     log=log if progress else (lambda s: None))
    preset_grid = tuple(preset.grid or DEFAULT_GRID)
    grid_note = "" if grid == preset_grid else f"; grid {[list(g) for g in grid]} given"
    log(f"MAD protocol, preset '{preset.name}' ({preset.description}{grid_note}); arch '{arch}'; "
        f"{len(settings)} settings x {len(grid)} runs"
        f"{f' x {seeds} seeds' if seeds > 1 else ''} -> {out_dir}")
    t_start = time.time()
    for i, ((task, setting, name), setting_work) in enumerate(zip(settings, work)):
        missing = [(g, s) for g in grid for s in cfg.run_seeds
                   if results_table.key(arch, task, name, *g, s) not in done]
        todo = list(dict.fromkeys(g for g, _ in missing))
        todo_seeds = tuple(dict.fromkeys(s for _, s in missing))
        label = f"[{arch} {i + 1}/{len(settings)}] {task}/{name}"
        if not todo:
            meter.skip(setting_work)
            log(f"{label}: done, skipped")
            continue
        setting_cfg = (cfg if cfg.seeds is None
                       else dataclasses.replace(cfg, seeds=todo_seeds))
        rows = _run_setting(model_fn, task, setting, name, todo, cfg=setting_cfg, arch=arch,
                            preset=preset, seed=seed, out_dir=out_dir, cache_dir=cache_dir,
                            meter=meter, label=label, setting_work=setting_work, log=log)
        results = results_table.upsert(results, rows)
        if _writes():
            results_table.write(results_path, results)
        done |= {results_table.key(arch, task, name, r["learning_rate"], r["weight_decay"],
                                   r["seed"]) for r in rows}
        ok = [r for r in rows if r["status"] == "ok"]
        best = max((r["final_test_acc"] for r in ok), default=float("nan"))
        log(f"{label}: best final test acc (macro) {best:.3f} over {len(rows)} runs"
            f"{f', {len(rows) - len(ok)} failed' if len(ok) < len(rows) else ''} "
            f"({format_duration(rows[0].get('wall_time_s'))}; "
            f"elapsed {format_duration(time.time() - t_start)})")
    return results


def _read_results(path: str, out_dir: str, log) -> pd.DataFrame:
    """The results table; a damaged file is set aside and rebuilt from the settings' result.json
    files, so nothing that finished is lost."""
    try:
        return results_table.read(path)
    except results_table.ResultsError as e:
        rows = results_table.rows_from_result_files(os.path.join(out_dir, "runs"))
        aside = f"{path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
        if _writes():
            os.replace(path, aside)
        rebuilt = results_table.upsert(results_table.empty(), rows)
        if _writes():
            results_table.write(path, rebuilt)
        log(f"warning: {e}; moved it to {aside} and rebuilt {len(rebuilt)} rows from the "
            "settings' result.json files")
        return rebuilt


def _run_setting(model_fn, task, setting, name, grid, *, cfg, arch, preset, seed, out_dir,
                 cache_dir, meter, label, setting_work, log) -> list[dict]:
    from mad_jax import tasks as tasks_lib

    run_dir = os.path.join(out_dir, "runs", task, name)
    key, value = tasks_lib.difficulty_variable(task, setting)
    common = {"arch": arch, "preset": preset.name, "task": task, "setting": name,
              "difficulty_key": key, "difficulty_value": value, "select_on": cfg.select_on,
              "setting_params": dict(setting)}
    train_data, test_data, validation_data = load_task_data(task, setting, cfg,
                                                            cache_dir=cache_dir)
    common.update(train_examples=len(train_data[0]), test_examples=len(test_data[0]))
    # A model_fn that rejects its arguments (unknown layer, bad config) stops the sweep.
    # max_length is the setting's seq_len, as the reference passes it.
    model = model_fn(task, int(setting["vocab_size"]), model_max_length(setting, train_data[0]))
    meter.start_setting(label, float(train_data[0].shape[1]))
    try:
        runs = fit(model, train_data, test_data, dataclasses.replace(cfg, grid=tuple(grid)),
                   validation_data=validation_data, out_dir=run_dir, on_log=meter,
                   log=lambda s: log(f"{label}: {s}"))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # a run that crashes is recorded as failed; the sweep goes on
        if _writes():
            os.makedirs(run_dir, exist_ok=True)
            with open(os.path.join(run_dir, "error.txt"), "w") as f:
                f.write(traceback.format_exc())
        message = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
        log(f"{label}: FAILED ({message}); traceback in {run_dir}/error.txt")
        meter.end_setting(setting_work)
        return [dict(common, learning_rate=lr, weight_decay=wd, seed=s, status="failed",
                     error=message, grid_size=len(grid) * len(cfg.run_seeds))
                for lr, wd in grid for s in cfg.run_seeds]
    meter.end_setting(setting_work)
    rows = []
    for r in runs:
        rows.append(dict(common, **{k: r[k] for k in (
            "learning_rate", "weight_decay", "seed", "status", "final_test_acc",
            "final_test_acc_micro", "best_test_acc", "best_step", "test_loss", "final_val_acc",
            "final_val_acc_micro", "final_train_loss", "steps", "total_steps", "wall_time_s",
            "compile_time_s", "params", "grid_size", "error")}))
    if _writes():  # the rows too: a damaged results.csv is rebuilt from these files
        atomic_write_json(os.path.join(run_dir, "result.json"),
                          {"task": task, "setting": name, "setting_params": dict(setting),
                           "preset": preset.name, "arch": arch, "runs": runs, "rows": rows})
    return rows

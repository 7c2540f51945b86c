"""`run`: every setting of every task x the hyperparameter grid -> a results table, one row per
run. `run` is `prepare` (every check, nothing written; a sweep prepares all its architectures
first) then `execute`.

Layout of `out_dir` (one architecture):

    out_dir/protocol.json                       preset, seed, grid, arch: checked on every restart
    out_dir/results.csv                         one row per finished run (rewritten atomically)
    out_dir/runs/<task>/<setting>/result.json   the setting's runs with loss and accuracy curves,
                                                their rows and the setting's identity
    out_dir/runs/<task>/<setting>/<lr=..,wd=..>/metrics.jsonl + events.out.tfevents.*
    out_dir/runs/<task>/<setting>/checkpoints/  orbax checkpoints while the setting trains

Every row carries the fingerprint of its run's identity (`mad_jax.protocol.fingerprint`: the
model's full config, the task setting, the training config, lr, wd, seed, the metric and data
versions). A finished ok run whose fingerprint matches is never trained again; a failed one is
trained again unless `retry_failed=False`. A run whose fingerprint differs (the model, a training
field or the code version of the metric changed since it finished) is never read as done: by the
`on_change` policy it is trained again, saying so in one line ("rerun"), or the protocol stops
with a one-line error naming the field that changed ("error", the default). A setting killed
mid-way resumes from its last checkpoint.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import os
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from mad_jax.protocol import fingerprint, pack_size, results_table, validation
from mad_jax.protocol.validation import ProtocolError
from mad_jax.protocol.presets import Preset, get_preset
from mad_jax.protocol.progress import Progress, format_duration
from mad_jax.training import signals
from mad_jax.training.config import NOT_IDENTITY, TrainConfig, to_steps
from mad_jax.training.hparam_grid import DEFAULT_GRID
from mad_jax import sharding, storage
from mad_jax.training.train import fit, fit_packed, load_task_data, model_max_length

PROTOCOL_FILE = "protocol.json"
ON_CHANGE = ("error", "rerun")
# A setting's identity leaves out what does not change results (training.config.NOT_IDENTITY) and
# the run axes: every run adds its own lr, wd and seed (`run_fingerprint`).
_NOT_IDENTITY = NOT_IDENTITY + ("grid", "seeds", "learning_rate", "weight_decay")


def check_tasks(tasks: Sequence[str] | str | None) -> list[str]:
    """Task names (all six if None); a comma-separated string is accepted."""
    from mad_jax import tasks as tasks_lib

    if tasks is None or tasks == "" or tasks == "all":
        return list(tasks_lib.TASKS)
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not tasks:
        raise ProtocolError("no task given; name tasks (e.g. 'in-context-recall,compression') "
                            f"or leave them empty for all six: {', '.join(tasks_lib.TASKS)}")
    unknown = [t for t in tasks if t not in tasks_lib.TASKS]
    if unknown:
        raise ProtocolError(f"unknown task(s) {', '.join(map(repr, unknown))}; "
                            f"valid tasks: {', '.join(tasks_lib.TASKS)}")
    return list(dict.fromkeys(tasks))


def check_writable(out_dir: str) -> None:
    """Creates out_dir and checks a file can be written there (ProtocolError if not)."""
    probe = storage.join(out_dir, f".write-test-{os.getpid()}")
    try:
        storage.write_text(probe, "ok")
        storage.remove(probe)
    except OSError as e:
        raise ProtocolError(f"workdir {out_dir!r} is not writable: {e.strerror or e}") from None


def plan(tasks: Sequence[str], preset: Preset) -> list[tuple[str, dict, str]]:
    """(task, setting, setting name) of every setting the preset runs, in grid order."""
    from mad_jax import tasks as tasks_lib

    out = []
    for task in tasks:
        named = [(s, tasks_lib.setting_name(task, s)) for s in tasks_lib.settings(task)]
        if preset.settings == "all":
            chosen = named
        elif preset.settings == "baseline":
            chosen = named[:1]
        else:  # setting names, e.g. ("baseline", "vocab_size=128"): those a task has
            chosen = [(s, name) for s, name in named if name in preset.settings]
            if not chosen:
                raise ProtocolError(
                    f"preset {preset.name!r} names no setting of {task} "
                    f"({', '.join(preset.settings)}); its settings: "
                    f"{', '.join(name for _, name in named)}")
        out.extend((task, s, name) for s, name in chosen)
    return out


def train_config(preset: str | Preset, *, seed: int = 0,
                 overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The one resolution of a protocol's training config: TrainConfig's defaults, then the
    preset's fields, then `seed` (data and init), then `overrides` (None: not set). Each layer
    replaces the one below it, a budget as a whole (`train_steps` over a preset's epochs)."""
    cfg = TrainConfig.from_any(get_preset(preset).train, seed=seed, data_seed=seed)
    return TrainConfig.from_any(cfg, **{k: v for k, v in (overrides or {}).items()
                                        if v is not None})


def train_identity(cfg: TrainConfig) -> dict:
    """The training fields that change what a run computes (JSON-ready)."""
    record = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IDENTITY}
    return json.loads(json.dumps(record))


def _changed_fields(old: dict, new: dict) -> list[str]:
    """'field: old -> new' for every field of the protocol record that differs (train fields by
    their own name)."""
    changes = []
    for k in ("preset", "seed", "grid"):
        if k in old and old.get(k) != new[k]:
            changes.append(f"{k}: {old.get(k)!r} -> {new[k]!r}")
    old_train, new_train = old.get("train") or {}, new["train"]
    for k in sorted(set(old_train) | set(new_train)):
        if k in _NOT_IDENTITY:
            continue
        if old_train.get(k) != new_train.get(k):
            changes.append(f"train.{k}: {old_train.get(k)!r} -> {new_train.get(k)!r}")
    return changes


def _check_protocol_file(out_dir: str, record: dict, on_change: str, log) -> bool:
    """Compares the workdir's protocol record with this one. Returns True when it changed and
    the policy is "rerun" (the old results table is then set aside); raises under "error"."""
    path = storage.join(out_dir, PROTOCOL_FILE)
    changed = False
    if storage.exists(path):
        try:
            old = storage.read_json(path)
        except (OSError, ValueError):
            old = {}
            log(f"warning: {path} is damaged; it is written again")
        changes = _changed_fields(old, record)
        if changes:
            shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more"
                                              if len(changes) > 3 else "")
            if on_change == "error":
                raise ProtocolError(
                    f"{out_dir} holds results of another protocol ({shown}); results of "
                    "different protocols must not mix: use another workdir, or "
                    "on_change=rerun (--config.on_change=rerun) to train them again")
            log(f"{out_dir}: the protocol changed ({shown}); every run is trained again "
                "(on_change=rerun)")
            changed = True
    if _writes():
        storage.write_json(path, record)
    return changed


def _writes() -> bool:
    """Only process 0 of a multi-host job writes results (every process computes them)."""
    return sharding.is_main_process()


@dataclasses.dataclass(frozen=True)
class ProtocolRun:
    """One architecture's protocol, checked by `prepare` (nothing written yet); `execute` runs it.

    settings: (task, setting, setting name) of every setting, in order (`plan`). cfg: the
    resolved training config (`train_config`), shared by every setting.
    """
    model_fn: Callable
    out_dir: str
    arch: str
    preset: Preset
    tasks: list[str]
    grid: tuple[tuple[float, float], ...]
    settings: list[tuple[str, dict, str]]
    cfg: TrainConfig
    seed: int
    seeds: int
    is_mad: bool
    retry_failed: bool
    on_change: str
    cache_dir: str | None
    pack: bool = False
    pack_max_runs: int | None = None  # runs per packed program; None: as many as memory holds


def run(model_fn: Callable, out_dir: str, *, tasks: Sequence[str] | str | None = None,
        grid: Sequence[tuple[float, float]] | None = None, preset: str | Preset = "full",
        arch: str | None = None, seed: int = 0, seeds: int = 1,
        train_overrides: Mapping[str, Any] | None = None, retry_failed: bool = True,
        on_change: str = "error", cache_dir: str | None = None, pack: bool = False,
        pack_max_runs: int | None = None, progress: bool = True, progress_every_s: float = 10.0,
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
    on_change: what to do with a finished run whose identity changed (the model's config, a
      training field, the metric's code version): "error" (default) stops with one line naming
      the field; "rerun" trains it again and says so.
    pack: train the settings of a task that share every shape (the training-set-size variants
      of its baseline, the noise variants, ...) side by side in one program
      (`training.fit_packed`): each run keeps its own data, schedule, evaluation points and early
      stop, so results equal the settings trained one by one up to float rounding of sums.
      Faster on accelerators, where one setting's runs leave the device idle.
    pack_max_runs: the most runs one packed program holds; None (default): as many as the
      device's memory holds (`pack_size.max_runs`, from the model's parameter and activation
      bytes). Larger batches of equal shapes train in several programs of whole settings (a
      setting's grid x seeds runs are never split).
    progress: print progress lines, at most one per `progress_every_s` seconds per setting.
    Everything is checked before anything is written (`prepare`); then `execute` runs it.
    """
    checked = prepare(model_fn, out_dir, tasks=tasks, grid=grid, preset=preset, arch=arch,
                      seed=seed, seeds=seeds, train_overrides=train_overrides,
                      retry_failed=retry_failed, on_change=on_change, cache_dir=cache_dir,
                      pack=pack, pack_max_runs=pack_max_runs)
    return execute(checked, progress=progress, progress_every_s=progress_every_s, log=log)


def prepare(model_fn: Callable, out_dir: str, *, tasks: Sequence[str] | str | None = None,
            grid: Sequence[tuple[float, float]] | None = None, preset: str | Preset = "full",
            arch: str | None = None, seed: int = 0, seeds: int = 1,
            train_overrides: Mapping[str, Any] | None = None, retry_failed: bool = True,
            on_change: str = "error", cache_dir: str | None = None,
            pack: bool = False, pack_max_runs: int | None = None) -> ProtocolRun:
    """Checks everything `run` takes (its arguments) before anything trains or is written: the
    names, the grid, the seeds, the training config (`train_config`), the mesh against the
    devices, and the architecture on the data of its bounding settings (validation.py).
    Raises ProtocolError (one line) for a mistake."""
    try:
        preset = get_preset(preset)
        tasks = check_tasks(tasks)
        grid = validation.check_grid(grid or preset.grid or DEFAULT_GRID)
        validation.check_seeds(seeds)
        if on_change not in ON_CHANGE:
            raise ProtocolError(f"on_change must be one of {', '.join(ON_CHANGE)}, got "
                                f"{on_change!r}")
        _check_pack_max_runs(pack_max_runs, pack=pack)
        overrides = dict(train_overrides or {})
        if seeds > 1:
            overrides["seeds"] = tuple(range(seed, seed + seeds))
        cfg = train_config(preset, seed=seed, overrides=overrides)
        validation.check_mesh(cfg, num_runs=len(grid) * seeds)
    except ValueError as e:
        raise ProtocolError(" ".join(str(e.args[0] if e.args else e).split())) from None
    arch = arch or getattr(model_fn, "__name__", "model")
    settings = plan(tasks, preset)
    validation.check_architecture(model_fn, settings, arch=arch, data_seed=cfg.data_seed,
                                  max_length=model_max_length)
    return ProtocolRun(model_fn=model_fn, out_dir=os.fspath(out_dir), arch=arch, preset=preset,
                       tasks=tasks, grid=grid, settings=settings, cfg=cfg, seed=seed,
                       seeds=seeds, is_mad=is_mad_protocol(preset, cfg, grid),
                       retry_failed=retry_failed, on_change=on_change, cache_dir=cache_dir,
                       pack=pack,
                       pack_max_runs=None if pack_max_runs is None else int(pack_max_runs))


def _check_pack_max_runs(pack_max_runs, *, pack: bool) -> None:
    if pack_max_runs is None:
        return
    if (isinstance(pack_max_runs, bool) or not isinstance(pack_max_runs, numbers.Integral)
            or pack_max_runs < 1):
        raise ProtocolError(f"pack_max_runs must be a positive int, got {pack_max_runs!r}: give "
                            "the most runs one packed program may hold, or None "
                            "(--config.pack_max_runs=0) for as many as the device's memory holds")
    if not pack:
        raise ProtocolError(f"pack_max_runs={pack_max_runs} bounds packed programs: set pack=True "
                            "(--config.pack=true), or leave pack_max_runs unset")


def execute(checked: ProtocolRun, *, progress: bool = True, progress_every_s: float = 10.0,
            log: Callable[[str], None] = print) -> pd.DataFrame:
    """Runs a protocol `prepare` checked; returns its results table (one row per run)."""
    out_dir, arch, preset, cfg, grid = (checked.out_dir, checked.arch, checked.preset,
                                        checked.cfg, checked.grid)
    check_writable(out_dir)
    # What the results depend on; the devices (mesh) do not count: a sweep may resume elsewhere.
    # Seeds may be added to a finished sweep: rows are keyed by seed.
    protocol_changed = _check_protocol_file(out_dir, {
        "preset": preset.name, "seed": checked.seed, "seeds": checked.seeds, "arch": arch,
        "train": train_identity(cfg), "grid": [list(g) for g in grid],
        "is_mad_score": checked.is_mad}, checked.on_change, log)
    results_path = storage.join(out_dir, results_table.RESULTS_FILE)
    if protocol_changed and storage.exists(results_path) and _writes():
        aside = f"{results_path}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        storage.move(results_path, aside)
        log(f"the old results are in {aside}")
    results = _read_results(results_path, out_dir, log, trust_result_files=not protocol_changed)
    failed_before = len(results_table.failed_keys(results)) if checked.retry_failed else 0
    if failed_before:
        log(f"{failed_before} failed run(s) in {results_path} will be trained again "
            "(retry_failed=False keeps them)")

    work = []
    for task, setting, name in checked.settings:
        n_train = setting["num_train_examples"]
        if cfg.max_train_examples:
            n_train = min(n_train, cfg.max_train_examples)
        steps = to_steps(cfg, "train", num_train_examples=n_train, batch_size=cfg.batch_size)
        work.append(steps * setting["seq_len"])
    meter = Progress(sum(work), every_s=progress_every_s,
                     log=log if progress else (lambda s: None))
    preset_grid = tuple(preset.grid or DEFAULT_GRID)
    grid_note = "" if grid == preset_grid else f"; grid {[list(g) for g in grid]} given"
    seeds_note = f" x {checked.seeds} seeds" if checked.seeds > 1 else ""
    preset_train = train_identity(train_config(preset, seed=checked.seed))
    changed = {k: v for k, v in train_identity(cfg).items()
               if k != "seeds" and preset_train.get(k) != v}
    if changed:  # the description is the preset's budget: say what overrides it
        grid_note += "; overridden: " + ", ".join(f"{k}={v}" for k, v in sorted(changed.items()))
    log(f"MAD protocol, preset '{preset.name}' ({preset.description}{grid_note}); arch '{arch}'; "
        f"{len(checked.settings)} settings x {len(grid)} runs{seeds_note} -> {out_dir}")
    t_start = time.time()
    for group in _setting_groups(checked.settings, pack=checked.pack):
        pending = []  # the group's settings with runs to train
        for i in group:
            task, setting, name = checked.settings[i]
            label = f"[{arch} {i + 1}/{len(checked.settings)}] {task}/{name}"
            stop = signals.take_up()  # SIGINT / SIGTERM between settings: every result written
            if stop is not None:
                raise signals.Interrupted(stop, where=f"before {task}/{name}")
            data = load_task_data(task, setting, cfg, cache_dir=checked.cache_dir)
            # A model_fn that rejects its arguments (unknown layer, bad config) stops the sweep.
            # max_length is the setting's seq_len, as the reference passes it.
            model = checked.model_fn(task, int(setting["vocab_size"]),
                                     model_max_length(setting, data[0][0]))
            identity = setting_identity(model, task, setting, cfg)
            todo_runs = _runs_to_train(results, identity, arch=arch, task=task, name=name,
                                       cfg=cfg, grid=grid, retry_failed=checked.retry_failed,
                                       on_change=checked.on_change,
                                       run_dir=storage.join(out_dir, "runs", task, name),
                                       label=label, log=log)
            if not todo_runs:
                meter.skip(work[i])
                log(f"{label}: done, skipped")
                continue
            pending.append(_Pending(i, task, setting, name, label, data, model, identity,
                                    todo_runs, work[i]))
        for batch in _packable(pending, full=len(grid) * len(cfg.run_seeds),
                               max_runs=functools.partial(_runs_per_program, checked, cfg),
                               log=lambda s: log(f"[{arch}] {s}")):
            done = (_run_packed(batch, cfg=cfg, grid=grid, checked=checked, meter=meter, log=log)
                    if len(batch) > 1 else [_run_one(batch[0], cfg=cfg, checked=checked,
                                                     meter=meter, log=log)])
            for item, (rows, runs) in zip(batch, done):
                results = results_table.upsert(results, rows)
                if _writes():
                    if runs:
                        _write_result_file(storage.join(out_dir, "runs", item.task, item.name),
                                           results, runs, task=item.task, name=item.name,
                                           setting=item.setting, preset=preset, arch=arch,
                                           identity=item.identity)
                    results_table.write(results_path, results)
                ok = [r for r in rows if r["status"] == "ok"]
                best = max((r["final_test_acc"] for r in ok), default=float("nan"))
                log(f"{item.label}: best final test acc (macro) {best:.3f} over {len(rows)} "
                    f"runs{f', {len(rows) - len(ok)} failed' if len(ok) < len(rows) else ''} "
                    f"({format_duration(rows[0].get('wall_time_s'))}; "
                    f"elapsed {format_duration(time.time() - t_start)})")
    return results


def is_mad_protocol(preset: Preset, cfg: TrainConfig, grid) -> bool:
    """Whether runs with this preset, training config and grid are the MAD protocol's: the full
    preset with its budget and grid unchanged (the seed and the devices may differ)."""
    if not preset.is_mad or tuple(grid) != tuple(DEFAULT_GRID):
        return False
    reference = train_identity(train_config(preset, seed=cfg.seed))
    return train_identity(cfg) == reference


def setting_identity(model, task: str, setting: Mapping[str, Any], cfg: TrainConfig) -> dict:
    """The identity shared by a setting's runs (each run adds its lr, wd and seed)."""
    return {"model": fingerprint.describe(model), "task": task,
            "setting": json.loads(json.dumps(dict(setting))), "train": train_identity(cfg),
            "versions": fingerprint.versions()}


def run_fingerprint(identity: Mapping[str, Any], lr: float, wd: float, seed: int) -> str:
    return fingerprint.fingerprint({**identity, "learning_rate": results_table.round_value(lr),
                                    "weight_decay": results_table.round_value(wd),
                                    "seed": int(seed)})


def _stored_identity(run_dir: str):
    try:
        return storage.read_json(storage.join(run_dir, "result.json")).get("identity")
    except (OSError, ValueError):
        return None


def _runs_to_train(results, identity, *, arch, task, name, cfg, grid, retry_failed, on_change,
                   run_dir, label, log) -> list:
    """The ((lr, wd), seed) runs of a setting to train: missing ones, failed ones (unless
    retry_failed is False), and finished ones whose fingerprint changed (by `on_change`)."""
    stored = results_table.rows_by_key(results)
    todo, changed = [], []
    for g in grid:
        for s in cfg.run_seeds:
            row = stored.get(results_table.key(arch, task, name, *g, s))
            if row is None:
                todo.append((g, s))
            elif row["status"] == "failed":  # no result to protect: the fingerprint is moot
                if retry_failed:
                    todo.append((g, s))
            elif row.get("fingerprint") != run_fingerprint(identity, *g, s):
                changed.append((g, s))
    if changed:
        old = _stored_identity(run_dir)
        if old is None or not any(
                r.get("fingerprint") for r in stored.values()
                if (r["task"], r["setting"]) == (task, name)):
            what = "no fingerprint (written by an older mad_jax)"
        else:
            what = "; ".join(fingerprint.first_differences(old, identity, limit=2)
                             or ["learning rate, weight decay or seed"])
        if on_change == "error":
            raise ProtocolError(
                f"{label}: {len(changed)} finished run(s) in {run_dir} were computed differently "
                f"({what}); use another workdir, or on_change=rerun (--config.on_change=rerun) "
                "to train them again")
        log(f"{label}: {len(changed)} finished run(s) changed ({what}); training them again "
            "(on_change=rerun)")
    return todo + changed


def _read_results(path: str, out_dir: str, log, *, trust_result_files: bool = True
                  ) -> pd.DataFrame:
    """The results table; a damaged file is set aside and rebuilt from the settings' result.json
    files, so nothing that finished is lost."""
    try:
        return results_table.read(path)
    except results_table.ResultsError as e:
        rows = (results_table.rows_from_result_files(storage.join(out_dir, "runs"))
                if trust_result_files else [])
        aside = f"{path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
        if _writes():
            storage.move(path, aside)
        rebuilt = results_table.upsert(results_table.empty(), rows)
        if _writes():
            results_table.write(path, rebuilt)
        log(f"warning: {e}; moved it to {aside} and rebuilt {len(rebuilt)} rows from the "
            "settings' result.json files")
        return rebuilt


@dataclasses.dataclass(frozen=True)
class _Pending:
    """A setting with runs to train, its data loaded and its model built."""

    index: int
    task: str
    setting: dict
    name: str
    label: str
    data: tuple
    model: Any
    identity: dict
    todo_runs: list
    work: float


def _setting_groups(settings, *, pack: bool) -> list[list[int]]:
    """Indices of the settings that may train in one program: those of a task with the same
    vocabulary and sequence length (so the same model and shapes), in order of their first
    setting; one setting each without packing."""
    if not pack:
        return [[i] for i in range(len(settings))]
    groups: dict[tuple, list[int]] = {}
    for i, (task, setting, _) in enumerate(settings):
        groups.setdefault((task, setting["vocab_size"], setting["seq_len"]), []).append(i)
    return list(groups.values())


def _packable(pending: list[_Pending], *, full: int,
              max_runs: Callable[[list[_Pending]], tuple[int, str]],
              log: Callable[[str], None]) -> list[list[_Pending]]:
    """The pending settings as batches: those training every run of the grid (`full` runs each)
    with an equal model and equal array shapes together, every other one alone. A batch of
    equal shapes holds at most `max_runs(batch)[0]` runs (whole settings, at least one per
    batch; `max_runs(batch)[1]` says why); a larger one is split in order, saying so."""
    def shapes(p):
        return tuple(None if a is None else (a[0].shape[1:], len(a[1])) for a in p.data[1:]) + (
            p.data[0][0].shape[1],)
    together = [p for p in pending if len(p.todo_runs) == full]
    batches, rest = [], [p for p in pending if len(p.todo_runs) != full]
    while together:
        first = together[0]
        same = [p for p in together if p.model == first.model and shapes(p) == shapes(first)]
        limit, reason = max_runs(same) if len(same) > 1 else (full, "")
        per_batch = max(1, limit // full)  # whole settings: a setting's runs stay together
        split = [same[i:i + per_batch] for i in range(0, len(same), per_batch)]
        if len(split) > 1:
            log(f"{first.task}: {len(same)} settings of equal shapes in {len(split)} programs of "
                f"at most {per_batch * full} runs ({reason})")
        batches.extend(split)
        together = [p for p in together if p not in same]
    return batches + [[p] for p in rest]


def _runs_per_program(checked: ProtocolRun, cfg: TrainConfig,
                      batch: list[_Pending]) -> tuple[int, str]:
    """(most runs in one packed program, why): `pack_max_runs`, else what the device's memory
    holds for the batch's model and shapes (`pack_size.max_runs`)."""
    if checked.pack_max_runs is not None:
        return checked.pack_max_runs, f"pack_max_runs={checked.pack_max_runs}"
    (train_x, _), (test_x, _), validation = batch[0].data
    eval_examples = len(test_x) + (0 if validation is None else len(validation[0]))
    return pack_size.max_runs(batch[0].model, batch_size=cfg.batch_size,
                              seq_len=train_x.shape[1], eval_examples=eval_examples)


def _common_row(item: _Pending, cfg: TrainConfig, checked: ProtocolRun) -> dict:
    from mad_jax import tasks as tasks_lib

    key, value = tasks_lib.difficulty_variable(item.task, item.setting)
    train_data, test_data, _ = item.data
    return {"arch": checked.arch, "preset": checked.preset.name, "task": item.task,
            "setting": item.name, "difficulty_key": key, "difficulty_value": value,
            "select_on": cfg.select_on, "setting_params": dict(item.setting),
            "is_mad_score": checked.is_mad, "train_examples": len(train_data[0]),
            "test_examples": len(test_data[0])}


def _rows(item: _Pending, runs: list[dict], cfg: TrainConfig, checked: ProtocolRun) -> list:
    common = _common_row(item, cfg, checked)
    return [dict(common, **{k: r[k] for k in (
        "learning_rate", "weight_decay", "seed", "status", "final_test_acc",
        "final_test_acc_micro", "best_test_acc", "best_step", "test_loss", "final_val_acc",
        "final_val_acc_micro", "final_train_loss", "steps", "total_steps", "wall_time_s",
        "compile_time_s", "params", "grid_size", "error")},
        fingerprint=run_fingerprint(item.identity, r["learning_rate"], r["weight_decay"],
                                    r["seed"])) for r in runs]


def _failed(items: list[_Pending], grids: list, error: BaseException, cfg: TrainConfig,
            checked: ProtocolRun, log) -> list[tuple[list, list]]:
    """Rows marking every run of `items` failed; the traceback goes to each setting's folder."""
    message = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"
    out = []
    for item, grid in zip(items, grids):
        run_dir = storage.join(checked.out_dir, "runs", item.task, item.name)
        if _writes():
            storage.write_text(storage.join(run_dir, "error.txt"), traceback.format_exc())
        log(f"{item.label}: FAILED ({message}); traceback in {run_dir}/error.txt")
        common = _common_row(item, cfg, checked)
        out.append(([dict(common, learning_rate=lr, weight_decay=wd, seed=s, status="failed",
                          error=message, grid_size=len(grid) * len(cfg.run_seeds),
                          fingerprint=run_fingerprint(item.identity, lr, wd, s))
                     for lr, wd in grid for s in cfg.run_seeds], []))
    return out


def _run_one(item: _Pending, *, cfg: TrainConfig, checked: ProtocolRun, meter,
             log) -> tuple[list, list]:
    """Trains one setting's runs to train (`training.fit`): (rows, runs)."""
    grid = list(dict.fromkeys(g for g, _ in item.todo_runs))
    seeds = tuple(dict.fromkeys(s for _, s in item.todo_runs))
    setting_cfg = cfg if cfg.seeds is None else dataclasses.replace(cfg, seeds=seeds)
    train_data, test_data, validation_data = item.data
    meter.start_setting(item.label, float(train_data[0].shape[1]))
    try:
        runs = fit(item.model, train_data, test_data,
                   dataclasses.replace(setting_cfg, grid=tuple(grid)),
                   validation_data=validation_data,
                   out_dir=storage.join(checked.out_dir, "runs", item.task, item.name),
                   on_log=meter, log=lambda s: log(f"{item.label}: {s}"))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # a run that crashes is recorded as failed; the sweep goes on
        meter.end_setting(item.work)
        return _failed([item], [grid], e, setting_cfg, checked, log)[0]
    meter.end_setting(item.work)
    return _rows(item, runs, setting_cfg, checked), runs


def _run_packed(items: list[_Pending], *, cfg: TrainConfig, grid, checked: ProtocolRun, meter,
                log) -> list[tuple[list, list]]:
    """Trains every run of several settings in one program (`training.fit_packed`)."""
    task = items[0].task
    label = f"[{checked.arch}] {task}: {len(items)} settings packed"
    longest = max(to_steps(cfg, "train", num_train_examples=len(p.data[0][0]),
                           batch_size=cfg.batch_size) for p in items)
    meter.start_setting(label, sum(p.work for p in items) / max(longest, 1))
    log(f"{label} ({', '.join(p.name for p in items)})")
    try:
        per_setting = fit_packed(
            items[0].model, [{"train": p.data[0], "test": p.data[1], "validation": p.data[2]}
                             for p in items], dataclasses.replace(cfg, grid=tuple(grid)),
            out_dir=storage.join(checked.out_dir, "runs", task),
            setting_names=[p.name for p in items], on_log=meter,
            log=lambda s: log(f"{label}: {s}"))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # every run of the pack is recorded as failed; the sweep goes on
        meter.end_setting(sum(p.work for p in items))
        return _failed(items, [grid] * len(items), e, cfg, checked, log)
    meter.end_setting(sum(p.work for p in items))
    return [(_rows(p, runs, cfg, checked), runs) for p, runs in zip(items, per_setting)]


def _write_result_file(run_dir, results, runs, *, task, name, setting, preset, arch, identity):
    """The setting's result.json: its identity, every run's curves (earlier ones kept) and every
    row of the setting in the table (a damaged results.csv is rebuilt from these files)."""
    path = storage.join(run_dir, "result.json")
    try:
        old = storage.read_json(path)
    except (OSError, ValueError):  # none yet, or damaged: only this invocation's runs are kept
        old = {}
    earlier = old.get("runs", []) if old.get("identity") == identity else []

    def run_key(r):
        return results_table.key(arch, task, name, r["learning_rate"], r["weight_decay"],
                                 r.get("seed"))

    new_keys = {run_key(r) for r in runs}
    all_runs = [r for r in earlier if run_key(r) not in new_keys] + list(runs)
    mine = results[(results["task"] == task) & (results["setting"] == name)
                   & (results["arch"] == arch)]
    rows = json.loads(mine.to_json(orient="records"))
    for row in rows:
        if isinstance(row.get("setting_params"), str):
            row["setting_params"] = json.loads(row["setting_params"])
    storage.write_json(path, {"task": task, "setting": name, "setting_params": dict(setting),
                             "preset": preset.name, "arch": arch, "identity": identity,
                             "runs": all_runs, "rows": rows})

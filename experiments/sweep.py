"""The MAD sweep CLI: one or several architectures through the protocol, then a score table and
a report.

    python -m experiments.sweep --config=experiments/configs/mad.py --config.preset=smoke \
        --config.workdir=workdir/smoke
    python -m experiments.sweep --config=experiments/configs/compare.py:quick

Workdir layout: <workdir>/<arch>/{protocol.json, results.csv, runs/...} per architecture (see
mad_jax.protocol.run), and <workdir>/results.csv (all architectures), report.md, report.html,
plots/*.png. Re-running the same command resumes: finished runs are skipped, a killed setting
continues from its last checkpoint. Errors that stop the sweep print one line and exit non-zero.
"""
from __future__ import annotations

import ast
import os
import re
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "sweep config file, e.g. experiments/configs/mad.py[:preset]", lock_config=True)


# Exit statuses: 0 every run ok; 1 a bad input stopped the sweep before or while training;
# 2 a bad command line or config file; 3 the sweep finished but some runs failed (everything
# that finished is written); 130 / 143 interrupted by SIGINT / SIGTERM (run it again to resume).
EXIT_RUNS_FAILED = 3


class SweepError(Exception):
    """A problem with the sweep's inputs; printed as one line, exit status 1."""


def _fail(message: str, status: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _exit_interrupted(message: str, status: int) -> None:
    """One line and the exit status, without waiting on background threads (data loaders,
    checkpoint writers): everything that matters is on disk."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors (unknown config field, bad value, missing file)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
        if any(l.startswith("Traceback") for l in lines):  # an exception inside get_config()
            lines = [lines[0].split(":")[0] + ":", lines[-1]]
        _fail(" ".join(" ".join(lines).split()), status=2)
    except (AttributeError, KeyError) as e:  # --config.<field> that the locked config lacks
        text = str(e)
        while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
            try:  # ml_collections nests repr()s of the message
                text = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                break
        _fail(f"unknown config field {' '.join(text.split())}", status=2)
    except Exception as e:  # a config file that fails to load or to apply its argument
        _fail(f"cannot load config: {type(e).__name__}: {' '.join(str(e).split())}", status=2)


def arch_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "-", name.strip().replace(" ", "+")).strip("-") or "model"


def architectures(config) -> dict[str, str]:
    """{arch name: layer string} from a config with `architectures` or `layers` (+ `name`)."""
    if "architectures" in config:
        archs = {str(k): str(v) for k, v in config.architectures.items()}
        chosen = [a.strip() for a in (config.get("archs") or "").split(",") if a.strip()]
        unknown = [a for a in chosen if a not in archs]
        if unknown:
            raise SweepError(f"unknown architecture(s) {', '.join(map(repr, unknown))} in archs; "
                             f"valid: {', '.join(archs)}")
        if chosen:
            archs = {a: archs[a] for a in dict.fromkeys(chosen)}
    else:
        archs = {config.get("name") or arch_slug(config.layers): config.layers}
    if not archs:
        raise SweepError("the config names no architecture")
    return archs


def parse_grid(text: str):
    """"lr:wd,lr:wd" -> ((lr, wd), ...); "" -> None (the protocol grid)."""
    if not text:
        return None
    try:
        grid = tuple(tuple(float(x) for x in item.split(":")) for item in text.split(","))
    except ValueError:
        grid = ()
    if not grid or any(len(g) != 2 for g in grid):
        raise SweepError(f"grid must look like '1e-4:0,1e-3:0.1', got {text!r}")
    return grid


def make_model_fn(layers: str, *, dim: int, norm: str):
    """model_fn(task, vocab_size, max_length) for a registered-layer hybrid (backbone per task)."""
    from mad_jax import models, tasks

    def model_fn(task: str, vocab_size: int, max_length: int):
        return models.build(layers, vocab_size=vocab_size, max_length=max_length, dim=dim,
                            norm=norm, backbone=tasks.TASK_BACKBONE[task])
    return model_fn


def check_mesh(config, num_runs: int) -> dict:
    """The mesh fields as TrainConfig overrides, after checking them against the devices."""
    from mad_jax import sharding

    if not config.mesh:
        if config.dcn_mesh or config.sharding_rules:
            raise SweepError("dcn_mesh and sharding_rules need a mesh, e.g. --config.mesh=auto")
        return {}
    import jax

    mesh = sharding.sweep_mesh(num_runs) if config.mesh == "auto" else config.mesh
    sharding.make_mesh(mesh, dcn_mesh=config.dcn_mesh or None)
    sharding.make_rules(config.sharding_rules or None)
    sweep = sharding.parse_mesh(mesh, jax.device_count())["sweep"]
    if num_runs % sweep:
        raise SweepError(f"mesh {config.mesh!r}: its sweep axis ({sweep}) does not divide the "
                         f"{num_runs} runs of the grid; use --config.mesh=auto")
    return {"mesh": config.mesh, "sharding_rules": config.sharding_rules,
            "dcn_mesh": config.dcn_mesh}


def validate(config) -> dict:
    """Checks everything that can be checked before training; returns the parsed sweep plan."""
    from mad_jax import models, protocol
    from mad_jax.protocol import validation
    from mad_jax.training import DEFAULT_GRID, TrainConfig
    from mad_jax.training.train import model_max_length

    try:
        preset = protocol.get_preset(config.preset)
        tasks = protocol.check_tasks(config.tasks)
        grid = parse_grid(config.grid)
        archs = architectures(config)
        seeds = config.get("seeds", 1)
        if not isinstance(seeds, int) or seeds < 1:
            raise SweepError(f"seeds must be a positive integer, got {seeds!r}")
        overrides = {k: v for k, v in config.train.items() if v is not None}
        overrides.update(check_mesh(config, len(grid or preset.grid or DEFAULT_GRID) * seeds))
        protocol.train_config(preset, seed=config.seed, overrides=overrides)
        TrainConfig.from_any(overrides)
        # Every architecture against the data it will see, before any workdir is touched.
        planned = protocol.plan(tasks, preset)
        for name, layers in archs.items():
            try:
                models.parse_layers(layers)
            except ValueError as e:
                raise SweepError(f"architecture {name!r}: {e}") from None
            validation.check_architecture(
                make_model_fn(layers, dim=config.dim, norm=config.norm), planned, arch=name,
                data_seed=config.seed, max_length=model_max_length)
    except (ValueError, KeyError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise SweepError(" ".join(str(text).split())) from None
    protocol.check_writable(config.workdir)
    return {"preset": preset, "tasks": tasks, "grid": grid, "archs": archs,
            "overrides": overrides}


def sweep(config) -> "pandas.DataFrame":
    import pandas as pd

    from mad_jax import protocol
    from mad_jax.protocol import results_table

    from mad_jax import sharding

    if config.get("distributed"):  # before anything touches a device: every host of the job
        try:
            sharding.initialize(True)
        except sharding.DistributedError as e:
            raise SweepError(str(e)) from None
    plan = validate(config)
    workdir = config.workdir
    cache_dir = config.cache_dir or os.path.join(workdir, "data")
    # Compiled programs persist across restarts: a resumed sweep does not compile again.
    import jax
    jax.config.update("jax_compilation_cache_dir",
                      config.jax_cache_dir or os.path.join(workdir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    t0 = time.time()
    tables = []
    for name, layers in plan["archs"].items():
        print(f"== {name}: {layers}", flush=True)
        out_dir = os.path.join(workdir, arch_slug(name))
        model_fn = make_model_fn(layers, dim=config.dim, norm=config.norm)
        tables.append(protocol.run(
            model_fn, out_dir, tasks=plan["tasks"], grid=plan["grid"], preset=plan["preset"],
            arch=name, seed=config.seed, seeds=config.get("seeds", 1),
            train_overrides=plan["overrides"], retry_failed=config.get("retry_failed", True),
            on_change=config.get("on_change", "error"),
            cache_dir=cache_dir,
            progress_every_s=config.progress_every_s, log=_log))
    results = pd.concat(tables, ignore_index=True) if tables else results_table.empty()
    if not sharding.is_main_process():  # process 0 writes and reports for the whole job
        return results
    results_table.write(os.path.join(workdir, results_table.RESULTS_FILE), results)
    # The score table comes first in what the user reads at the end.
    print("\n" + protocol.preset_notice(results))
    print(protocol.format_score_table(results) + "\n", flush=True)
    intervals = protocol.score_intervals(results)
    if len(intervals) and intervals["seeds"].max() > 1:
        print("Mean over seeds [95% interval]:")
        for row in intervals.itertuples(index=False):
            print(f"  {row.arch} {row.task}: {row.score:.3f} [{row.low:.3f}, {row.high:.3f}] "
                  f"({row.seeds} seeds)")
        print(flush=True)
    paper_keys = dict(config.paper_keys) if "paper_keys" in config else None
    if paper_keys is not None:
        from mad_jax.protocol import paper
        print("Beside the MAD paper (accuracy x 100):")
        print(paper.format_comparison(paper.compare(results, paper_keys=paper_keys)) + "\n",
              flush=True)
    if config.report:
        paths = protocol.write_report(workdir, results, paper_keys=paper_keys)
        print(f"report: {paths['md']} (and {os.path.basename(paths['html'])}, plots/)")
    failed = int((results["status"] != "ok").sum())
    print(f"{len(results)} runs ({failed} failed) in {(time.time() - t0) / 60:.1f} min; "
          f"results: {os.path.join(workdir, results_table.RESULTS_FILE)}", flush=True)
    return results


def outcome(results) -> tuple[int, str]:
    """(exit status, message): 0 when every run is ok, EXIT_RUNS_FAILED when some failed."""
    failed = int((results["status"] != "ok").sum()) if len(results) else 0
    if not failed:
        return 0, ""
    return EXIT_RUNS_FAILED, (
        f"{failed} of {len(results)} runs failed (their errors are in the results table and in "
        "<workdir>/<arch>/runs/<task>/<setting>/error.txt); fix the cause and run the same "
        "command again: failed runs are trained again")


def _log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def main(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:  # orbax and jax log every checkpoint at INFO
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}", status=2)
    if flags.FLAGS["config"].present == 0:
        _fail("--config is required, e.g. --config=experiments/configs/mad.py", status=2)
    try:
        config = _CONFIG.value
        config.keys()  # config_flags reports a file that failed to load only on first use
    except Exception as e:
        _fail(f"cannot load config: {' '.join(str(e).split())}", status=2)
    if config.get("kind") == "scaling":  # pretraining IsoFLOP sweeps (experiments/configs/scaling.py)
        from experiments import scaling_sweep
        sys.exit(scaling_sweep.run_from_config(config))
    from mad_jax.protocol import ProtocolError
    from mad_jax.training import signals
    try:
        with signals.graceful_stop():
            results = sweep(config)
    except (SweepError, ProtocolError) as e:
        _fail(str(e))
    except signals.Interrupted as e:
        _exit_interrupted(f"interrupted by {e}; run the same command again to resume",
                          e.exit_status)
    except KeyboardInterrupt:
        _exit_interrupted("interrupted; run the same command again to resume", 130)
    status, message = outcome(results)
    if status:  # everything that finished is written; the failures are in the table
        _fail(message, status=status)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)

"""The command line of mad_jax: MAD protocol sweeps (one or several architectures -> a score
table and a report), for configs of kind "scaling" pretraining IsoFLOP sweeps, and for configs
of kind "search" the architecture search (`mad_jax.search`).

    python -m experiments.sweep --config=experiments/configs/mad.py --config.preset=smoke \
        --config.workdir=workdir/smoke
    python -m experiments.sweep --config=experiments/configs/compare.py:quick
    python -m experiments.sweep --config=experiments/configs/scaling.py:smoke
    python -m experiments.sweep --config=experiments/configs/search.py:preset=cpu
    python -m experiments.sweep --config=experiments/configs/mad.py:quick --config.print_config=true

MAD workdir layout: <workdir>/<arch>/{protocol.json, results.csv, runs/...} per architecture (see
mad_jax.protocol.run), and <workdir>/results.csv (all architectures), report.md, report.html,
plots/*.png. Re-running the same command resumes: finished runs are skipped, a killed setting
continues from its last checkpoint. `print_config` prints the resolved config (the preset's
values filled in: what will run) after every check, and stops before anything is written.

Exit statuses: 0 every run ok; 1 a bad input stopped the sweep before or while training (one line;
nothing is written when it is found before training); 2 a bad command line or config file; 3 the
sweep finished but some runs failed (everything that finished is written); 130 / 143 interrupted
by SIGINT / SIGTERM (run it again to resume).
"""
from __future__ import annotations

import ast
import dataclasses
import os
import re
import sys
import tempfile
import time

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "sweep config file, e.g. experiments/configs/mad.py[:preset]", lock_config=True)
EXIT_RUNS_FAILED = 3


class SweepError(ValueError):
    """A config the sweep cannot read (unknown architecture names, a malformed grid)."""


def _fail(message: str, status: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _exit_interrupted(message: str, status: int) -> None:
    """One line and the exit status, without waiting on background threads (data loaders,
    checkpoint writers): everything that matters is on disk."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)


def _log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


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


# --- the MAD config, read into the library's arguments ---

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


def make_model_fn(layers: str, *, dim: int, norm: str):
    """model_fn(task, vocab_size, max_length) for a registered-layer hybrid (backbone per task)."""
    from mad_jax import models, tasks

    def model_fn(task: str, vocab_size: int, max_length: int):
        return models.build(layers, vocab_size=vocab_size, max_length=max_length, dim=dim,
                            norm=norm, backbone=tasks.TASK_BACKBONE[task])
    return model_fn


def prepare(config) -> list:
    """One checked `protocol.prepare` per architecture: the library checks everything (once),
    before anything trains or is written. Raises SweepError or ProtocolError (one line)."""
    from mad_jax import storage
    from mad_jax.protocol.run import prepare as prepare_protocol
    from mad_jax.protocol.validation import parse_grid

    grid = parse_grid(config.grid)
    overrides = dict(config.train.to_dict(), mesh=config.mesh,
                     sharding_rules=config.sharding_rules, dcn_mesh=config.dcn_mesh)
    cache_dir = config.cache_dir or storage.join(config.workdir, "data")
    return [prepare_protocol(
        make_model_fn(layers, dim=config.dim, norm=config.norm),
        storage.join(config.workdir, arch_slug(name)), tasks=config.tasks, grid=grid,
        preset=config.preset, arch=name, seed=config.seed, seeds=config.get("seeds", 1),
        train_overrides=overrides, retry_failed=config.get("retry_failed", True),
        on_change=config.get("on_change", "error"), cache_dir=cache_dir,
        pack=config.get("pack", False), pack_max_runs=config.get("pack_max_runs", 0) or None)
        for name, layers in architectures(config).items()]


def resolved(config, checked) -> config_dict.ConfigDict:
    """The config as it will run: `train` holds the resolved TrainConfig (preset, then the
    overrides, then its defaults), `tasks` and `grid` the protocol's."""
    out = config_dict.ConfigDict(config.to_dict())
    first = checked[0]
    out.tasks = ",".join(first.tasks)
    out.grid = ",".join(f"{lr:g}:{wd:g}" for lr, wd in first.grid)
    out.train = {k: v for k, v in dataclasses.asdict(first.cfg).items() if k in out.train}
    return out


def run_mad(config, *, compilation_cache: bool = True) -> int:
    """A MAD sweep: every architecture through the protocol, then the score table, the combined
    results table and the report; returns the exit status. compilation_cache: keep compiled
    programs in <workdir>/jax_cache (a process-wide jax setting)."""
    import pandas as pd

    from mad_jax import protocol, sharding, storage
    from mad_jax.protocol import results_table
    from mad_jax.protocol.run import execute

    checked = prepare(config)
    if config.get("print_config"):
        print(resolved(config, checked), end="", flush=True)
        return 0
    if compilation_cache:  # after the checks: bad input writes nothing
        _use_compilation_cache(config)
    t0 = time.time()
    tables = []
    for (name, layers), run in zip(architectures(config).items(), checked):
        print(f"== {name}: {layers}", flush=True)
        tables.append(execute(run, progress_every_s=config.progress_every_s, log=_log))
    results = pd.concat(tables, ignore_index=True) if tables else results_table.empty()
    status, message = outcome(results)
    if not sharding.is_main_process():  # process 0 writes and reports for the whole job
        return status
    path = storage.join(config.workdir, results_table.RESULTS_FILE)
    results_table.write(path, results)
    paper_keys = dict(config.paper_keys) if "paper_keys" in config else None
    _print_scores(results, paper_keys)
    if config.report:
        paths = protocol.write_report(config.workdir, results, paper_keys=paper_keys)
        print(f"report: {paths['md']} (and {os.path.basename(paths['html'])}, plots/)")
    failed = int((results["status"] != "ok").sum())
    print(f"{len(results)} runs ({failed} failed) in {(time.time() - t0) / 60:.1f} min; "
          f"results: {path}", flush=True)
    if status:  # everything that finished is written; the failures are in the table
        print(f"error: {message}", file=sys.stderr, flush=True)
    return status


def _print_scores(results, paper_keys) -> None:
    """The score table first, then 95% intervals over seeds and the paper's table beside ours."""
    from mad_jax import protocol

    print("\n" + protocol.preset_notice(results))
    print(protocol.format_score_table(results) + "\n", flush=True)
    intervals = protocol.score_intervals(results)
    if len(intervals) and intervals["seeds"].max() > 1:
        print("Mean over seeds [95% interval]:")
        for row in intervals.itertuples(index=False):
            print(f"  {row.arch} {row.task}: {row.score:.3f} [{row.low:.3f}, {row.high:.3f}] "
                  f"({row.seeds} seeds)")
        print(flush=True)
    if paper_keys is not None:
        from mad_jax.protocol import paper
        print("Beside the MAD paper (accuracy x 100):")
        print(paper.format_comparison(paper.compare(results, paper_keys=paper_keys)) + "\n",
              flush=True)


def outcome(results) -> tuple[int, str]:
    """(exit status, message): 0 when every run is ok, EXIT_RUNS_FAILED when some failed."""
    failed = int((results["status"] != "ok").sum()) if len(results) else 0
    if not failed:
        return 0, ""
    return EXIT_RUNS_FAILED, (
        f"{failed} of {len(results)} runs failed (their errors are in the results table and in "
        "<workdir>/<arch>/runs/<task>/<setting>/error.txt); fix the cause and run the same "
        "command again: failed runs are trained again")


def _use_compilation_cache(config) -> None:
    """Compiled programs persist across restarts: a resumed sweep does not compile again."""
    import jax

    from mad_jax import storage

    # The cache goes through epath, which reaches buckets only with gcsfs: a URL workdir keeps
    # its compiled programs on local disk.
    local = (os.path.join(tempfile.gettempdir(), "mad_jax-jax_cache")
             if storage.is_url(config.workdir) else os.path.join(config.workdir, "jax_cache"))
    jax.config.update("jax_compilation_cache_dir", config.jax_cache_dir or local)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


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
    from experiments import scaling_sweep
    from mad_jax import sharding
    from mad_jax.protocol import ProtocolError
    from mad_jax.training import signals

    try:
        if config.get("distributed"):  # before anything touches a device: every host of the job
            sharding.initialize(True)
        with signals.graceful_stop():
            if config.get("kind") == "scaling":
                status = scaling_sweep.run_from_config(config, log=_log)
            elif config.get("kind") == "search":
                from mad_jax import search
                status = search.run_from_config(config, log=_log)
            else:
                status = run_mad(config)
    except (SweepError, ProtocolError, sharding.DistributedError) as e:
        _fail(" ".join(str(e).split()))
    except signals.Interrupted as e:
        _exit_interrupted(f"interrupted by {e}; run the same command again to resume",
                          e.exit_status)
    except KeyboardInterrupt:
        _exit_interrupted("interrupted; run the same command again to resume", 130)
    sys.exit(status)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)

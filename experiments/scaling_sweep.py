"""The scaling sweep: corpus -> IsoFLOP runs -> fits, plots and report (configs of kind "scaling").

    python -m experiments.sweep --config=experiments/configs/scaling.py:preset=cpu
    python -m experiments.sweep --config=experiments/configs/scaling.py:smoke

`experiments.sweep`, the one command line, calls `run_from_config(config)` for such configs.
Workdir layout:
    corpus/            the token store (built from corpus.inputs when missing)
    runs/<run>.json    one per finished run (plan, result row, loss curve)
    results.csv        the results table (rewritten after every run)
    summary.json, report.md, plots/*.png
Re-running the same command resumes: finished runs are skipped. Bad input ends with one line
("error: ...") and exit status 1.
"""
from __future__ import annotations

import sys
import time

from experiments.configs import scaling as scaling_config


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{name} must be positive numbers, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


def open_corpus(cfg, log=print):
    """Opens the config's token store, building it from `corpus.inputs` when it is missing."""
    import jax

    from mad_jax import storage
    from mad_jax.scaling.corpus import build_corpus
    from mad_jax.scaling.token_store import META, TokenStore

    path = cfg.corpus.path or storage.join(cfg.workdir, "corpus")
    if not storage.exists(storage.join(path, META)):
        if not cfg.corpus.inputs:
            raise FileNotFoundError(
                f"missing corpus: no token store at {path} and corpus.inputs is empty; build one "
                f"with `python -m experiments.build_corpus --output={path} --inputs=<files>` or "
                "set --config.corpus.inputs")
        if jax.process_count() > 1:
            raise FileNotFoundError(f"missing corpus at {path}: build it once before a multi-host "
                                    "sweep (python -m experiments.build_corpus)")
        log(f"building the token store {path} from {cfg.corpus.inputs}")
        build_corpus(path, cfg.corpus.inputs, tokenizer=cfg.corpus.tokenizer,
                     validation_fraction=cfg.corpus.validation_fraction,
                     max_bytes=cfg.corpus.max_bytes or None, seed=cfg.seed, log=log)
    store = TokenStore.open(path)
    wanted = cfg.corpus.tokenizer.rstrip("/").rsplit("/", 1)[-1]
    if store.meta["tokenizer"] != wanted:
        raise ValueError(f"token store {path} was built with tokenizer "
                         f"{store.meta['tokenizer']!r}, the config asks for "
                         f"{cfg.corpus.tokenizer!r}; set corpus.path to another store")
    return store


def run_from_config(config, log=print) -> int:
    """Runs the whole scaling sweep for a `kind = "scaling"` config; returns the exit status (1
    and one line for bad input). `log` gets the progress lines (process 0 only)."""
    try:
        return _run(config, log)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {' '.join(str(text).split())}", file=sys.stderr, flush=True)
        return 1


def _run(config, log) -> int:
    import numpy as np

    from mad_jax import sharding, storage
    from mad_jax.scaling import isoflop, report, window_source

    cfg = scaling_config.resolve(config)
    if cfg.print_config:
        print(cfg, end="", flush=True)
        return 0
    families = _names(cfg.families)
    budgets = _floats(cfg.budgets, "budgets")
    sizes = _floats(cfg.sizes, "sizes")
    writer = sharding.is_main_process()
    log = log if writer else (lambda _line: None)
    t0 = time.time()
    if cfg.plan_only:
        from mad_jax.scaling.tokenizer import load_tokenizer

        store, vocab_size = None, load_tokenizer(cfg.corpus.tokenizer).vocab_size
    else:
        store = open_corpus(cfg, log)
        vocab_size = store.vocab_size
        log(f"corpus: {store}")
    plan = isoflop.plan_isoflop(
        families, budgets, sizes=sizes, vocab_size=vocab_size, seq_len=cfg.seq_len,
        global_batch=cfg.global_batch, spec=cfg.ladder, attention_ratio=cfg.attention_ratio,
        min_steps=cfg.min_steps,
        tokens_per_param=(cfg.tokens_per_param_min, cfg.tokens_per_param_max))
    for warning in plan.warnings:
        log(f"warning: {warning}")
    log(f"plan: {len(plan.runs)} runs, {len(families)} families x {len(budgets)} budgets, "
        f"{plan.total_flops():.3g} FLOPs in all (preset {cfg.preset}, workdir {cfg.workdir})")
    if cfg.plan_only:
        for run in plan.runs:
            log(f"  {run.name}: {run.rung.params:,} params, {run.tokens:,} tokens "
                f"({run.tokens / run.rung.params:.1f}/param), {run.steps} steps, "
                f"{run.flops:.3g} FLOPs")
        return 0
    if writer:
        storage.write_json(storage.join(cfg.workdir, "config.json"), cfg.to_dict())
    itemsize = 2 if store.meta["dtype"] == "uint16" else 4
    tokens = store.load("train") if store.num_tokens("train") * itemsize <= 512 << 20 else store
    eval_windows = window_source.eval_windows(store, seq_len=cfg.seq_len,
                                              num_windows=cfg.num_eval_windows)
    train = dict(cfg.train.to_dict(), seed=cfg.seed, data_seed=cfg.seed)
    rows = isoflop.run_isoflop(plan, tokens, eval_windows, cfg.workdir, pretrain_overrides=train,
                               log=log, is_writer=writer,
                               checkpoints=bool(train.get("checkpoint_every_steps")))
    if writer and cfg.report:
        setup = {"preset": cfg.preset, "corpus": store.path, "tokenizer": store.meta["tokenizer"],
                 "train_tokens": store.num_tokens("train"),
                 "eval_tokens": int(np.prod(eval_windows[:, 1:].shape)), "seq_len": cfg.seq_len,
                 "global_batch": cfg.global_batch, "ladder": cfg.ladder,
                 "learning_rate": train.get("learning_rate")}
        summary = report.write_report(rows, cfg.workdir, bootstrap=cfg.bootstrap, seed=cfg.seed,
                                      mad_scores=cfg.mad_scores or None,
                                      mad_arch_map=cfg.mad_arch_map, setup=setup, log=log)
        for line in report.summary_lines(summary):
            log(line)
    log(f"done: {len(rows)} runs in {(time.time() - t0) / 60:.1f} min; results in {cfg.workdir}")
    return 0


if __name__ == "__main__":
    print("error: python -m experiments.scaling_sweep is now python -m experiments.sweep (the same "
          f"flags): python -m experiments.sweep {' '.join(sys.argv[1:])}", file=sys.stderr)
    sys.exit(2)

"""Pretraining data, model-size ladders, IsoFLOP sweeps and scaling-law fits.

    store = TokenStore.open(path)             # tensorstore zarr3 token arrays (local or gs://)
    rungs = ladder("striped-hyena", [1e6, 4e6], vocab_size=257)    # width/depth/heads per size
    plan = plan_isoflop(families, budgets, sizes=..., vocab_size=..., seq_len=..., global_batch=...)
    rows = run_isoflop(plan, tokens, eval_windows, workdir)        # trains, writes results.csv
    frontiers = fit_frontiers(rows)           # N_opt ~ C^a, D_opt ~ C^b, loss ~ C^-c
    write_report(rows, workdir)               # plots, summary.json, report.md

One run on its own: `mad_jax.scaling.pretrain.pretrain(model, tokens, eval_windows, config)`.
"""
from mad_jax.scaling.corpus import build_corpus, resolve_inputs, stdlib_sources
from mad_jax.scaling.correlation import correlate, load_mad_scores
from mad_jax.scaling.fits import (Frontier, Parabola, PowerLaw, fit_frontier, fit_frontiers,
                                  fit_parabola, fit_power_law)
from mad_jax.scaling.isoflop import Plan, PlannedRun, plan_isoflop, read_results_csv, run_isoflop
from mad_jax.scaling.ladders import (FAMILIES, LADDER_SPECS, Family, LadderSpec, Rung, get_family,
                                     ladder, rung)
from mad_jax.scaling.pretrain import PretrainConfig, warmup_cosine
from mad_jax.scaling.report import write_report
from mad_jax.scaling.state_optimal import compute_optimal_points, fit_state_laws, pareto_frontier
from mad_jax.scaling.token_store import TokenStore, TokenStoreWriter
from mad_jax.scaling.tokenizer import ByteTokenizer, JsonTokenizer, load_tokenizer
from mad_jax.scaling.window_source import WindowSource, eval_windows, train_batches, window_starts

__all__ = [
    "ByteTokenizer", "FAMILIES", "Family", "Frontier", "JsonTokenizer", "LADDER_SPECS",
    "LadderSpec", "Parabola", "Plan", "PlannedRun", "PowerLaw", "PretrainConfig", "Rung",
    "TokenStore", "TokenStoreWriter", "WindowSource", "build_corpus", "compute_optimal_points",
    "correlate", "eval_windows", "fit_frontier", "fit_frontiers", "fit_parabola", "fit_power_law",
    "fit_state_laws", "get_family", "ladder", "load_mad_scores", "load_tokenizer",
    "pareto_frontier", "plan_isoflop", "read_results_csv", "resolve_inputs", "rung",
    "run_isoflop", "stdlib_sources", "train_batches", "warmup_cosine", "window_starts",
    "write_report",
]

"""IsoFLOP sweeps: for each FLOP budget C, models along a ladder, each trained on C / F tokens.

F is the training FLOPs per token of the model, 3 x forward FLOPs per sequence / seq_len
(`Rung.train_flops_per_token`, from `mad_jax.models.flops`). A run trains for
floor(C / F / (batch x seq_len)) steps with a warmup + cosine schedule that ends exactly there,
so its real compute (`flops` in the results) is at most C and within one step of it.

Every finished run writes `runs/<name>.json` atomically and the sweep rewrites `results.csv`
after each run, so a killed sweep resumes where it stopped (finished runs are skipped).
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from mad_jax import storage, training
from mad_jax.scaling import ladders
from mad_jax.scaling.pretrain import PRETRAIN_VERSION, PretrainConfig, pretrain

RESULT_COLUMNS = (
    "name", "family", "budget", "params", "target_params", "dim", "depth", "num_heads", "layers",
    "seq_len", "global_batch", "steps", "tokens", "tokens_per_param", "flops_per_token", "flops",
    "state_size", "eval_loss", "eval_perplexity", "eval_bits_per_token", "train_loss",
    "train_seconds", "first_step_seconds", "tokens_per_second", "diverged")


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One model at one budget."""

    family: str
    budget: float
    rung: ladders.Rung
    seq_len: int
    global_batch: int
    steps: int
    flops_per_token: float

    @property
    def tokens(self) -> int:
        return self.steps * self.global_batch * self.seq_len

    @property
    def flops(self) -> float:
        return self.tokens * self.flops_per_token

    @property
    def name(self) -> str:
        name = f"{self.family}_C{self.budget:.2e}_d{self.rung.dim}_n{self.rung.depth}"
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)

    def describe(self) -> dict:
        """Everything that identifies the run (a resumed sweep re-runs it if any of it changed)."""
        return {"name": self.name, "family": self.family, "budget": self.budget,
                **self.rung.to_dict(), "seq_len": self.seq_len, "global_batch": self.global_batch,
                "steps": self.steps, "tokens": self.tokens,
                "flops_per_token": self.flops_per_token, "flops": self.flops,
                "pretrain_version": PRETRAIN_VERSION}


@dataclasses.dataclass(frozen=True)
class Plan:
    runs: tuple[PlannedRun, ...]
    warnings: tuple[str, ...]

    def total_flops(self) -> float:
        return float(sum(r.flops for r in self.runs))


def plan_isoflop(families: Sequence[str], budgets: Sequence[float], *, sizes: Sequence[float],
                 vocab_size: int, seq_len: int, global_batch: int,
                 spec: str | ladders.LadderSpec = "tiny",
                 attention_ratio: float | None = None, min_steps: int = 50,
                 tokens_per_param: tuple[float, float] = (0.5, 2000.0)) -> Plan:
    """The runs of an IsoFLOP sweep: every ladder rung whose token budget at C is sensible.

    A rung is kept at budget C when it gets at least `min_steps` steps and its tokens per
    parameter lie in `tokens_per_param`. Raises ValueError (one line) when a budget is too small
    for even the smallest model of a family, or a family name is unknown; budgets where fewer than
    3 sizes qualify (no parabola) are reported in `warnings`.
    """
    if not families or not budgets:
        raise ValueError("an IsoFLOP sweep needs at least one family and one budget")
    tokens_per_step = global_batch * seq_len
    runs, warnings = [], []
    for family in families:
        fam = ladders.get_family(family, attention_ratio)
        rungs = ladders.ladder(fam, sizes, vocab_size=vocab_size, spec=spec, strict=False)
        rungs = list({(r.dim, r.depth): r for r in rungs}.values())  # two targets may share a model
        if not rungs:
            raise ValueError(f"{fam.name}: none of the sizes {list(sizes)} is on the {spec} ladder")
        if len(rungs) < len(sizes):
            warnings.append(f"{fam.name}: {len(sizes) - len(rungs)} of the sizes are off its "
                            "ladder or share a model with another size")
        for budget in sorted(budgets):
            kept = []
            for rung in rungs:
                fpt = rung.train_flops_per_token(seq_len)
                steps = int(budget // (fpt * tokens_per_step))
                ratio = steps * tokens_per_step / rung.params
                if steps >= min_steps and tokens_per_param[0] <= ratio <= tokens_per_param[1]:
                    kept.append(PlannedRun(fam.name, float(budget), rung, seq_len, global_batch,
                                           steps, fpt))
            if not kept:
                smallest = min(rungs, key=lambda r: r.params)
                need = min_steps * tokens_per_step * smallest.train_flops_per_token(seq_len)
                if budget < need:
                    raise ValueError(
                        f"budget {budget:.3g} FLOPs is too small for the smallest {fam.name} "
                        f"model ({smallest.params:,} params needs >= {need:.3g} FLOPs for "
                        f"{min_steps} steps of {tokens_per_step} tokens)")
                warnings.append(f"{fam.name} at {budget:.3g} FLOPs: no ladder size has between "
                                f"{tokens_per_param[0]} and {tokens_per_param[1]} tokens per "
                                "parameter")
            elif len(kept) < 3:
                warnings.append(f"{fam.name} at {budget:.3g} FLOPs: only {len(kept)} sizes qualify "
                                "(a parabola needs 3); add sizes or change the budget")
            runs.extend(kept)
    return Plan(tuple(runs), tuple(warnings))


def result_row(run: PlannedRun, out: Mapping) -> dict:
    """One results-table row from a plan entry and `pretrain`'s output."""
    rung = run.rung
    return {"name": run.name, "family": run.family, "budget": run.budget, "params": rung.params,
            "target_params": rung.target_params, "dim": rung.dim, "depth": rung.depth,
            "num_heads": rung.num_heads, "layers": " ".join(rung.layers), "seq_len": run.seq_len,
            "global_batch": run.global_batch, "steps": int(out["steps"]),
            "tokens": int(out["tokens"]), "tokens_per_param": out["tokens"] / rung.params,
            "flops_per_token": run.flops_per_token, "flops": out["tokens"] * run.flops_per_token,
            "state_size": rung.state_size(run.seq_len), "eval_loss": out["eval_loss"],
            "eval_perplexity": out["eval_perplexity"],
            "eval_bits_per_token": out["eval_loss"] / math.log(2), "train_loss": out["train_loss"],
            "train_seconds": out["train_seconds"],
            "first_step_seconds": out.get("first_step_seconds"),
            "tokens_per_second": out["tokens_per_second"],
            "diverged": bool(out["diverged"])}


def write_results_csv(path: str, rows: Sequence[Mapping]) -> None:
    """Writes the results table atomically (columns `RESULT_COLUMNS`; a local path or a URL)."""
    import pandas as pd  # noqa: PLC0415

    storage.write_csv(path, pd.DataFrame(list(rows), columns=list(RESULT_COLUMNS)))


def read_results_csv(path: str):
    """The IsoFLOP results table (local path or bucket URL) as a pandas DataFrame."""
    if not storage.exists(path):
        raise FileNotFoundError(f"no results table at {path}; run the sweep first")
    return storage.read_csv(path)


def run_isoflop(plan: Plan, tokens, eval_windows_ExW: np.ndarray, workdir: str, *,
                pretrain_overrides: Mapping | None = None,
                log: Callable[[str], None] | None = print,
                is_writer: bool = True, checkpoints: bool = False) -> list[dict]:
    """Trains every planned run (skipping finished ones) and returns the results rows.

    Args:
      plan: from `plan_isoflop`.
      tokens: training tokens (TokenStore or 1-D ids).
      eval_windows_ExW: the fixed validation windows every run is scored on.
      workdir: runs/<name>.json, results.csv and checkpoints/ go here.
      pretrain_overrides: PretrainConfig fields (learning_rate, warmup_fraction, mesh, ...).
      log: progress sink.
      is_writer: whether this process writes files (process 0 of a multi-host job).
      checkpoints: resume interrupted runs from `checkpoints/<name>` (needs checkpoint_every_steps).
    """
    overrides = dict(pretrain_overrides or {})
    rows: list[dict] = []
    results_path = storage.join(workdir, "results.csv")
    total = plan.total_flops()
    done_flops = trained_flops = 0.0
    start = time.time()
    for i, run in enumerate(plan.runs):
        run_path = storage.join(workdir, "runs", f"{run.name}.json")
        tag = (f"[{i + 1}/{len(plan.runs)}] {run.family} C={run.budget:.2e} d{run.rung.dim} "
               f"n{run.rung.depth} ({run.rung.params:,} params, {run.tokens:,} tokens, "
               f"{run.steps} steps)")
        if storage.exists(run_path):
            saved = storage.read_json(run_path)
            if saved.get("plan") == _jsonable(run.describe()):
                rows.append(saved["row"])
                done_flops += run.flops
                if log:
                    log(f"{tag}: done earlier, eval loss {saved['row']['eval_loss']:.4f}")
                continue
        if log:
            log(f"{tag}: training")
        config = PretrainConfig(seq_len=run.seq_len, global_batch=run.global_batch,
                                total_steps=run.steps, **overrides)
        model = run.rung.build(run.seq_len)
        ckpt_dir = (training.local_checkpoint_dir(storage.join(workdir, "checkpoints", run.name))
                    if checkpoints else None)
        out = pretrain(model, tokens, eval_windows_ExW, config, log=log, label="    ",
                       checkpoint_dir=ckpt_dir)
        row = result_row(run, out)
        rows.append(row)
        done_flops += run.flops
        trained_flops += run.flops
        if is_writer:
            storage.write_json(run_path, {"plan": run.describe(), "row": row,
                                          "loss_curve": out["loss_curve"], "evals": out["evals"]})
            write_results_csv(results_path, rows)
        if log:
            elapsed = time.time() - start
            eta = elapsed / max(trained_flops, 1.0) * (total - done_flops)
            status = ("DIVERGED" if out["diverged"] else
                      f"eval loss {row['eval_loss']:.4f} ppl {row['eval_perplexity']:.3f}")

            log(f"{tag}: {status} in {out['train_seconds']:.0f}s "
                f"({done_flops / total:.0%} of the sweep's FLOPs, eta {eta / 60:.1f} min)")
    if is_writer:
        write_results_csv(results_path, rows)
    return rows


def _jsonable(obj):
    import json  # noqa: PLC0415

    return json.loads(json.dumps(obj, default=storage.json_default))

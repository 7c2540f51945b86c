"""CPU training-step time side by side with the PyTorch MAD reference (athms/mad-lab).

    PYTHONPATH=/path/to/flash-attention .venv/bin/python -m benchmarks.reference_step \\
        --reference=/path/to/mad-lab --torch-site-packages=VENV/lib/python3.11/site-packages
    ... --archs="mh-attention swiglu" --batch-size=32 --steps=2 --repeats=2    # a quick check

In one process on the same machine, for each architecture (default: the default hybrid
"hyena swiglu mh-attention swiglu", "mh-attention swiglu", "hyena swiglu" at width 128) it trains
in-context recall's baseline shapes (batch 128 x 127 tokens, vocabulary 16) in float32 with
AdamW:

- mad_jax: one run through the training loop's compiled train step (`mad_jax.training.loop`:
  `make_partitioner("")`, `create_state`, `compile_programs`, `Programs.place`);
- the reference: its own `LanguageModel` built from its layer classes and configs
  (`benchmarks/reference_parity.py`'s loading, CPU paths, use_flash_attn=False), holding OUR initial
  weights (so both have the same parameters), stepped by a bare torch loop (zero_grad, forward,
  cross-entropy, backward, `torch.optim.AdamW.step`): the reference's step without Lightning's
  overhead;

both on the same batches. The frameworks take turns, `--repeats` times `--steps` steps each (one
untimed step before every turn); the table shows medians of wall and process-CPU seconds per step
(CPU seconds count every thread, so they show what a framework burns beyond the wall time).
Then the (lr, wd) grid of the protocol: our 6 runs vmapped in one program against the reference's
6 runs one after another (`--grid-arch`; `--grid-arch=""` skips it).

Ratios are reference time / our time: above 1 we are faster. The machine's load average is
recorded beside the figures; only figures from an otherwise quiet machine compare frameworks.
Writes benchmarks/results/reference_step.json (or --out). PyTorch is never a requirement of
mad_jax: it is imported only here, from --torch-site-packages or the environment.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from benchmarks import reference_parity

DEFAULT_ARCHS = ("hyena swiglu mh-attention swiglu", "mh-attention swiglu", "hyena swiglu")
MISSING_REFERENCE = ("benchmarks/reference_step.py needs --reference=PATH/TO/mad-lab (a local "
                     "checkout of github.com/athms/mad-lab) and PyTorch (importable, or "
                     "--torch-site-packages=PATH)")


def _time_torch(step, n_steps: int) -> tuple[float, float]:
    """(wall s, process CPU s) of `n_steps` calls of `step(i)` after one untimed call."""
    step(0)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n_steps):
        step(i + 1)
    return time.perf_counter() - t0, time.process_time() - c0


class ReferenceRun:
    """One reference model and its AdamW on torch copies of the shared batches."""

    def __init__(self, ref, model, batches, *, lr: float, wd: float):
        from mad_jax.tasks import IGNORE_INDEX

        torch = ref.torch
        self.model = model.train()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999),
                                           eps=1e-8, weight_decay=wd)
        self.loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        self.batches = [(torch.from_numpy(np.asarray(b["inputs"], np.int64)),
                         torch.from_numpy(np.asarray(b["targets"], np.int64))) for b in batches]

    def step(self, i: int) -> None:
        x_BxL, y_BxL = self.batches[i % len(self.batches)]
        self.optimizer.zero_grad(set_to_none=True)
        logits_BxLxV = self.model(x_BxL)
        loss = self.loss_fn(logits_BxLxV.reshape(-1, logits_BxLxV.shape[-1]), y_BxL.reshape(-1))
        loss.backward()
        self.optimizer.step()


def setup(ref, arch: str, args) -> dict:
    """Both sides of one architecture: our initial parameters, the reference model holding them,
    the batches, and what is needed to compile our programs."""
    import jax
    import jax.numpy as jnp
    from mad_jax import models, sharding, tasks, training

    layers = models.parse_layers(arch)
    setting = dict(tasks.settings(args.task)[0], num_train_examples=4 * args.batch_size,
                   num_test_examples=args.batch_size)
    vocab, seq_len = int(setting["vocab_size"]), int(setting["seq_len"])
    backbone = tasks.TASK_BACKBONE[args.task]
    inputs, targets = tasks.load(args.task, setting, "train", seed=0)
    b = args.batch_size
    batches = [{"inputs": inputs[i::4][:b], "targets": targets[i::4][:b]} for i in range(4)]
    model = reference_parity.build_ours(layers, vocab_size=vocab, max_length=seq_len,
                                        backbone=backbone, norm=args.norm)
    sample = jnp.asarray(inputs[:1])
    params = sharding.unbox(training.init_params(model, jax.random.key(args.seed), sample))
    ref.torch.manual_seed(args.seed)
    ref_model = reference_parity.build_reference(ref, layers, vocab_size=vocab,
                                                 max_length=seq_len, backbone=backbone,
                                                 norm=args.norm)
    kept = reference_parity.copy_into_reference(ref, ref_model, jax.device_get(params), layers,
                                                backbone=backbone, norm=args.norm)
    return {"arch": arch, "model": model, "params": params, "ref_model": ref_model,
            "specs": sharding.param_specs(model, sample), "batches": batches,
            "shape": (args.batch_size, int(inputs.shape[1])),
            "eval_shape": (1, args.batch_size, int(inputs.shape[1])),
            "params_ours": training.count_params(params),
            "params_reference": int(sum(p.numel() for p in ref_model.parameters())),
            "reference_own_tensors": kept}


def our_programs(s: dict, grid, args):
    """(grid state, compiled programs, compile s) of `grid`'s runs: one run unvmapped, or the
    runs vmapped in one program, through the training loop."""
    import jax
    from mad_jax import training
    from mad_jax.training import loop

    tx = training.make_optimizer()
    part = loop.make_partitioner("", group_size=len(grid), batch_sizes={"batch": args.batch_size})
    state, shardings = loop.create_state(
        part, lambda p, r: training.init_grid_state(p, tx, grid, total_steps=1000, rng=r),
        s["params"], jax.random.key_data(jax.random.key(args.seed + 1)), params_specs=s["specs"])
    t0 = time.perf_counter()
    programs = loop.compile_programs(s["model"], tx, part, state, shardings,
                                     batch_shape=s["shape"], eval_shape=s["eval_shape"],
                                     vmapped=len(grid) > 1, precision="float32")
    return state, programs, time.perf_counter() - t0


def _medians(timings, steps: int) -> dict:
    return {"wall_s_per_step": statistics.median(w for w, _ in timings) / steps,
            "cpu_s_per_step": statistics.median(c for _, c in timings) / steps}


def measure_single(ref, s: dict, args) -> dict:
    """One run per framework, taking turns: medians of wall and CPU s per step."""
    from benchmarks.protocol import time_steps

    state, programs, compile_s = our_programs(s, [(args.lr, args.wd)], args)
    placed = [programs.place(b) for b in s["batches"]]
    theirs = ReferenceRun(ref, s["ref_model"], s["batches"], lr=args.lr, wd=args.wd)
    timings = {"ours": [], "reference": []}
    for _ in range(args.repeats):
        wall, cpu, state = time_steps(lambda st, b: programs.train(st, b)[0], state, placed,
                                       args.steps)
        timings["ours"].append((wall, cpu))
        timings["reference"].append(_time_torch(theirs.step, args.steps))
    return {"ours": _medians(timings["ours"], args.steps),
            "reference": _medians(timings["reference"], args.steps),
            "compile_s": compile_s, "timings_wall_cpu_s": timings}


def measure_grid(ref, s: dict, args) -> dict:
    """The protocol's 6 (lr, wd) runs: ours vmapped in one program, the reference's one after
    another (each its `--steps` steps); per grid step = every run one step."""
    import copy

    from benchmarks.protocol import time_steps
    from mad_jax import training

    grid = list(training.DEFAULT_GRID)
    state, programs, compile_s = our_programs(s, grid, args)
    placed = [programs.place(b) for b in s["batches"]]
    runs = [ReferenceRun(ref, copy.deepcopy(s["ref_model"]), s["batches"], lr=lr, wd=wd)
            for lr, wd in grid]
    timings = {"ours": [], "reference": []}
    for _ in range(args.repeats):
        wall, cpu, state = time_steps(lambda st, b: programs.train(st, b)[0], state, placed,
                                       args.steps)
        timings["ours"].append((wall, cpu))
        per_run = [_time_torch(run.step, args.steps) for run in runs]
        timings["reference"].append((sum(w for w, _ in per_run), sum(c for _, c in per_run)))
    return {"arch": s["arch"], "length": s["shape"][1], "runs": len(grid),
            "ours": _medians(timings["ours"], args.steps),
            "reference": _medians(timings["reference"], args.steps), "compile_s": compile_s,
            "timings_wall_cpu_s": timings}


def table_lines(rows: list[dict], grid: dict | None, header: str) -> list[str]:
    lines = [header, "",
             "| model | params (ours / reference) | ours s/step | reference s/step | speed "
             "(reference / ours) | ours CPU-s/step | reference CPU-s/step | CPU (reference / "
             "ours) | our compile s |", "|---|---|---|---|---|---|---|---|---|"]

    def line(name, params, r):
        o, t = r["ours"], r["reference"]
        return (f"| {name} | {params} | {o['wall_s_per_step']:.3f} | {t['wall_s_per_step']:.3f} | "
                f"{t['wall_s_per_step'] / o['wall_s_per_step']:.2f}x | {o['cpu_s_per_step']:.2f} | "
                f"{t['cpu_s_per_step']:.2f} | {t['cpu_s_per_step'] / o['cpu_s_per_step']:.2f}x | "
                f"{r['compile_s']:.1f} |")

    for r in rows:
        lines.append(line(r["arch"], f"{r['params_ours']:,} / {r['params_reference']:,}", r))
    if grid:
        lines.append(line(f"grid of {grid['runs']} (lr, wd) runs, {grid['arch']}: ours vmapped "
                          "vs reference one after another (s per grid step)", "", grid))
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=None, help="local mad-lab checkout (required)")
    p.add_argument("--flash-attn", default=None,
                   help="directory holding flash_attn (if it is not importable already)")
    p.add_argument("--torch-site-packages", default=None,
                   help="a site-packages with torch, lightning, torchmetrics, einops, appended to "
                        "sys.path (e.g. a separate venv's)")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                   help="torch intra-op threads (default: every CPU, as XLA uses)")
    p.add_argument("--archs", default=",".join(DEFAULT_ARCHS),
                   help="comma-separated architectures, each a layer string")
    p.add_argument("--grid-arch", default=DEFAULT_ARCHS[0],
                   help="architecture of the 6-run grid comparison ('' skips it)")
    p.add_argument("--task", default="in-context-recall", help="its baseline's shapes")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per framework and turn")
    p.add_argument("--repeats", type=int, default=5, help="turns per framework (medians)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--norm", default="rmsnorm", choices=("rmsnorm", "layernorm"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = p.parse_args(argv)
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.reference:
        raise SystemExit(MISSING_REFERENCE)
    ref = reference_parity.import_reference(args.reference, args.flash_attn,
                                            args.torch_site_packages, args.torch_threads)
    import jax

    load_before = os.getloadavg()
    rows = []
    for arch in args.archs:
        s = setup(ref, arch, args)
        rows.append({"arch": arch, "length": s["shape"][1], "params_ours": s["params_ours"],
                     "params_reference": s["params_reference"],
                     "reference_own_tensors": s["reference_own_tensors"],
                     **measure_single(ref, s, args)})
        print(f"  {arch}: ours {rows[-1]['ours']['wall_s_per_step']:.3f} s/step, reference "
              f"{rows[-1]['reference']['wall_s_per_step']:.3f}", flush=True)
    grid = measure_grid(ref, setup(ref, args.grid_arch, args), args) if args.grid_arch else None
    load_after = os.getloadavg()
    length = (grid or rows[0])["length"]
    header = (f"{args.task} baseline shapes (batch {args.batch_size} x {length} tokens), width "
              f"128, float32; medians of {args.repeats} turns x {args.steps} steps; jax "
               f"{jax.__version__} ({jax.default_backend()}), torch {ref.torch.__version__} "
               f"({args.torch_threads} threads); {os.cpu_count()} CPUs, load average "
               f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
    lines = table_lines(rows, grid, header)
    print("\n" + "\n".join(lines))
    record = {"config": vars(args), "platform": platform.platform(), "host": platform.node(),
              "cpus": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "jax": jax.__version__, "torch": ref.torch.__version__,
              "load_avg_before": load_before, "load_avg_after": load_after,
              "rows": rows, "grid": grid, "table": "\n".join(lines)}
    out = args.out or os.path.join(reference_parity.RESULTS_DIR, "reference_step.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(record, f, indent=1, default=str)
    print(f"\nwrote {out}")
    return record


if __name__ == "__main__":
    main()

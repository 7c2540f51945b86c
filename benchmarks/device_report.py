"""One device report: kernels, the protocol's training modes, the full protocol's time, and MFU.

    python -m benchmarks.device_report                 # the first accelerator: sized for < 8 min
    python -m benchmarks.device_report --tiny          # every size shrunk: a CPU check, ~1 minute
    python -m benchmarks.device_report --sections=protocol,mfu --early-stop=0.6

Sections (each a block of rows of the one table; `--sections` picks some):

  kernels    every Pallas kernel against its XLA reference (`benchmarks/kernels.py`'s cases):
             forward and forward+backward ms, bytes/s and FLOP/s, as fractions of the device's peaks
             (`kernels.PEAKS`, looked up from `jax.devices()[0].device_kind`; an unknown device, the
             CPU included, gets no fractions).
  protocol   one setting of the MAD protocol (in-context recall's baseline, the full preset's batch
             and precision) trained three ways, the modes taking turns: the 6 (lr, wd) runs vmapped
             in one program, the 6 runs one after another, and packed (every run of the settings
             that share the baseline's shapes in one program, each with its own batches) where
             `mad_jax.training.loop` offers packed programs.
  estimate   the default hybrid's full protocol (66 settings x 6 runs, 200 epochs each: at most
             20,000 steps of batch 128) extrapolated from each protocol mode's time per run-step,
             scaled by each setting's tokens per step, times `--early-stop` (the share of each run's
             steps it trains before stopping early; 1.0 = no early stop), plus one compile per shape
             family.
  mfu        model FLOP utilisation of a ~125M striped hybrid (`mad_jax.scaling.ladders`'
             striped-hyena rung on the paper grid) training in bf16: 3 x forward FLOPs per step /
             step time, against the table's bf16 peak and a bf16 matmul peak measured in the same
             run (`benchmarks/sharding.py`'s `matmul_peak`).

Prints the table and writes it with every number to a JSON file (default
benchmarks/results/device_report-<device>.json). On an accelerator a time is wall-clock after
`block_until_ready`, i.e. device time plus dispatch.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels as pk
from benchmarks import kernels
from benchmarks.protocol import time_steps
from mad_jax import models, protocol, sharding, tasks, training
from mad_jax.scaling import ladders
from mad_jax.tasks.registry import get_task
from mad_jax.training import loop

SECTIONS = ("kernels", "protocol", "estimate", "mfu")
# --tiny checks that every section runs, not how fast: it compiles as the test suite does on CPU,
# without LLVM optimisation (about 3x faster compiles of the same HLO).
TINY_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
MODES = ("vmapped", "sequential", "packed")
MODE_NAMES = {"vmapped": "vmapped (6 runs, 1 program)",
              "sequential": "sequential (6 runs one after another)",
              "packed": "packed (settings sharing shapes, 1 program)"}


def use_fast_compiles(environ=os.environ) -> None:
    """Adds TINY_XLA_FLAGS to XLA_FLAGS (a flag already named there stays as given). XLA reads
    XLA_FLAGS when its first backend starts: in a process that already ran jax, nothing changes."""
    flags = environ.get("XLA_FLAGS", "")
    for flag in TINY_XLA_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    environ["XLA_FLAGS"] = flags


def table_peaks(kind: str) -> tuple[float, dict] | None:
    """(HBM bytes/s, {flop unit: FLOP/s}) of a known accelerator (`kernels.PEAKS`), else None."""
    for key, peaks in kernels.PEAKS.items():
        if key != "cpu" and key.lower() in kind.lower():
            return peaks
    return None


def _fraction(value, peak):
    return None if value is None or not peak else value / peak


# ------------------------------------------------------------------------------------- kernels

def kernel_rows(args, peaks) -> list[dict]:
    """One row per (op, dtype, impl): times, rates and fractions of the peaks (None: unknown)."""
    interpret = jax.default_backend() == "cpu"
    small = {"block_t": 16, "block_rows": 16} if args.tiny else {}
    conv_cfg = pk.CausalConvConfig(**small)
    scan_cfg = pk.SelectiveScanConfig(**({"block_d": 8, "chunk": 4} if args.tiny else {}))
    la_cfg, dr_cfg = pk.LinearAttentionConfig(), pk.DeltaRuleConfig()
    b, d, length = args.kernel_batch, args.kernel_dim, args.kernel_length
    timing = (args.kernel_repeats, args.kernel_warmup, interpret)
    cases = []
    for name in args.kernel_dtypes.split(","):
        dtype = jnp.dtype(name)
        cases += kernels.conv_cases(b, d, length, dtype, *timing, conv_cfg)
        cases += kernels.scan_cases(b, d, length, args.n_state, dtype, *timing, scan_cfg)
        cases += kernels.linear_attention_cases(b, d, length, args.head_dim, dtype, *timing,
                                                la_cfg)
        cases += kernels.delta_rule_cases(b, d, length, args.head_dim, dtype, *timing, dr_cfg)
        print(f"  kernels {name} done", flush=True)
    bandwidth, flops = peaks if peaks else (None, {})
    rows = []
    for kernel, reference in zip(cases[::2], cases[1::2]):  # the cases come as (pallas, xla)
        for case in (kernel, reference):
            row = dataclasses.asdict(case)
            for part in ("fwd", "fwd_bwd"):
                ms = getattr(case, f"{part}_ms")
                secs = None if ms is None else ms / 1e3
                row[f"{part}_bytes_per_s"] = None if secs is None else getattr(
                    case, f"{part}_bytes") / secs
                row[f"{part}_flops_per_s"] = None if secs is None else getattr(
                    case, f"{part}_flops") / secs
                row[f"{part}_of_peak_bandwidth"] = _fraction(row[f"{part}_bytes_per_s"],
                                                             bandwidth)
                row[f"{part}_of_peak_flops"] = _fraction(row[f"{part}_flops_per_s"],
                                                         flops.get(case.flop_unit))
            row["speedup_fwd_bwd"] = (reference.fwd_bwd_ms / kernel.fwd_bwd_ms
                                      if case is kernel and kernel.fwd_bwd_ms
                                      and reference.fwd_bwd_ms else None)
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ protocol

def shape_family(task: str, setting: dict) -> tuple:
    """What a setting's compiled programs depend on: backbone, vocabulary and input length."""
    length = get_task(task).length(tasks.resolve_params(task, setting))
    return tasks.TASK_BACKBONE[task], int(setting["vocab_size"]), int(length)


def packed_compiler():
    """The loop's compiler of packed programs (runs of several settings, each with its own
    batches [R, B, L]), called like `compile_programs` without `vmapped`."""
    return functools.partial(loop.compile_programs, vmapped=True, packed=True)


@dataclasses.dataclass
class Mode:
    """A way of training runs: the states it steps and how one step of all of them is taken."""

    name: str
    runs: int
    compile_s: float
    states: object
    step: Callable          # (states, batch) -> states: every run one step
    batches: list


def protocol_modes(args, cfg) -> tuple[list[Mode], dict]:
    """The three modes on one setting of `args.task` (one device), and what they train."""
    batch, precision = args.batch_size or cfg.batch_size, args.precision or cfg.precision
    baseline = tasks.settings(args.task)[0]
    family = shape_family(args.task, baseline)
    shared = [s for s in tasks.settings(args.task) if shape_family(args.task, s) == family]
    setting = dict(baseline, num_train_examples=4 * batch, num_test_examples=batch)
    if args.seq_len:
        setting["seq_len"] = args.seq_len
    inputs, targets = tasks.load(args.task, setting, "train", seed=0)
    test = loop.pad_eval_set(*tasks.load(args.task, setting, "test", seed=0), batch)
    model = models.build(args.layers, vocab_size=setting["vocab_size"],
                         max_length=setting["seq_len"], dim=args.dim,
                         backbone=tasks.TASK_BACKBONE[args.task],
                         layer_configs={"mh-attention": {"num_heads": args.num_heads}}
                         if args.num_heads else None)
    host_batches = [{"inputs": inputs[i::4][:batch], "targets": targets[i::4][:batch]}
                    for i in range(4)]
    sample = jnp.asarray(inputs[:1])
    tx = training.make_optimizer()
    params = sharding.unbox(training.init_params(model, jax.random.key(0), sample))
    specs = sharding.param_specs(model, sample)
    rng = jax.random.key_data(jax.random.key(1))
    grid = list(training.DEFAULT_GRID)

    def programs_for(runs, total_steps, compile_fn, batch_shape, eval_shape):
        part = loop.make_partitioner("", group_size=len(runs), batch_sizes={"batch": batch})
        state, shardings = loop.create_state(
            part, lambda p, r: training.init_grid_state(p, tx, runs, total_steps=total_steps,
                                                        rng=r), params, rng, params_specs=specs)
        t0 = time.perf_counter()
        programs = compile_fn(model, tx, part, state, shardings, batch_shape=batch_shape,
                              eval_shape=eval_shape, precision=precision)
        return state, programs, time.perf_counter() - t0

    steps = training.to_steps(cfg, "train", num_train_examples=baseline["num_train_examples"],
                              batch_size=batch)
    shape = (batch, inputs.shape[1])
    modes = []
    state, vm, compile_s = programs_for(grid, steps, functools.partial(
        loop.compile_programs, vmapped=True), shape, test[0].shape)
    modes.append(Mode("vmapped", len(grid), compile_s, state, lambda s, b: vm.train(s, b)[0],
                      [vm.place(b) for b in host_batches]))
    singles = [programs_for([g], steps, functools.partial(loop.compile_programs, vmapped=False),
                            shape, test[0].shape) for g in grid]
    single = singles[0][1]
    modes.append(Mode("sequential", len(grid), singles[0][2], [s for s, _, _ in singles],
                      lambda ss, b: [single.train(s, b)[0] for s in ss],
                      [single.place(b) for b in host_batches]))
    # Packed: every run of the settings sharing the baseline's shapes, with its own budget in steps
    # and its own batch order (run r starts at batch r).
    runs = [g for _ in shared for g in grid]
    budgets = [training.to_steps(cfg, "train", num_train_examples=s["num_train_examples"],
                                 batch_size=batch) for s in shared for _ in grid]
    r = len(runs)
    state, pk_programs, compile_s = programs_for(
        runs, budgets, packed_compiler(), (r,) + shape, (test[0].shape[0], r) + shape)
    stacked = [{k: np.stack([host_batches[(i + j) % 4][k] for j in range(r)])
                for k in ("inputs", "targets")} for i in range(4)]
    modes.append(Mode("packed", r, compile_s, state, lambda s, b: pk_programs.train(s, b)[0],
                      [pk_programs.place(b) for b in stacked]))
    info = {"task": args.task, "setting": setting, "layers": args.layers, "dim": args.dim,
            "params": training.count_params(params), "batch_size": batch,
            "length": int(inputs.shape[1]), "precision": precision,
            "packed_settings": len(shared), "steps_per_run": steps}
    return modes, info


def protocol_rows(args, cfg) -> tuple[list[dict], dict]:
    """Per mode: compile s, grid steps/s (every run one step), run-steps/s, s per run-step, s per
    whole run (the baseline's 200 epochs at this batch), CPU s per grid step; medians over
    `args.repeats` of `args.steps` steps, the modes taking turns."""
    modes, info = protocol_modes(args, cfg)
    timings = {m.name: [] for m in modes}
    for _ in range(args.repeats):
        for m in modes:
            wall, cpu, m.states = time_steps(m.step, m.states, m.batches, args.steps)
            timings[m.name].append((wall, cpu))
    rows = []
    for m in modes:
        wall = statistics.median(w for w, _ in timings[m.name]) / args.steps
        cpu = statistics.median(c for _, c in timings[m.name]) / args.steps
        rows.append({"mode": m.name, "available": True, "runs": m.runs, "compile_s": m.compile_s,
                     "grid_steps_per_s": 1 / wall, "run_steps_per_s": m.runs / wall,
                     "s_per_run_step": wall / m.runs, "cpu_s_per_grid_step": cpu,
                     "s_per_run": wall / m.runs * info["steps_per_run"],
                     "timings_wall_cpu_s": timings[m.name]})
    return rows, info


# ------------------------------------------------------------------------------------ estimate

def protocol_budget(cfg) -> list[dict]:
    """Every setting of the full protocol: its shape family and its steps per run."""
    out = []
    for task in tasks.TASKS:
        for setting in tasks.settings(task):
            family = shape_family(task, setting)
            steps = training.to_steps(cfg, "train", num_train_examples=setting[
                "num_train_examples"], batch_size=cfg.batch_size)
            out.append({"task": task, "family": family, "steps": steps})
    return out


def estimate_rows(rows, info, cfg, early_stop: float) -> dict:
    """Hours of the full protocol per mode: each setting's run-steps at the measured s per
    run-step scaled by tokens per step (batch x length), times `early_stop`; one compile per
    shape family."""
    budget = protocol_budget(cfg)
    runs = len(training.DEFAULT_GRID)
    measured_tokens = info["batch_size"] * info["length"]
    run_steps = runs * sum(b["steps"] for b in budget)
    token_scaled = runs * sum(b["steps"] * cfg.batch_size * b["family"][2] / measured_tokens
                              for b in budget)
    families = len({b["family"] for b in budget})
    out = {"settings": len(budget), "runs": runs * len(budget), "run_steps": run_steps,
           "max_steps_per_run": max(b["steps"] for b in budget), "early_stop": early_stop,
           "shape_families": families, "rows": []}
    for row in rows:
        train_h = row["s_per_run_step"] * token_scaled * early_stop / 3600
        compile_h = families * row["compile_s"] / 3600
        out["rows"].append({"mode": row["mode"], "available": True, "train_hours": train_h,
                            "compile_hours": compile_h, "total_hours": train_h + compile_h})
    return out


# ----------------------------------------------------------------------------------------- mfu

def mfu_row(args, peaks) -> dict:
    """Training-step MFU of the ladder's striped-hyena rung nearest `args.mfu_params`."""
    from benchmarks.sharding import matmul_peak  # imported after jax started: see the report

    rung = ladders.rung("striped-hyena", args.mfu_params, vocab_size=args.mfu_vocab,
                        spec=args.mfu_spec)
    b, length = args.mfu_batch, args.mfu_seq_len
    model = rung.build(max_length=length)
    tx = training.make_optimizer()
    part = loop.make_partitioner("", group_size=1, batch_sizes={"batch": b})
    sample = jnp.zeros((1, length), jnp.int32)

    def create(rng):
        params = sharding.unbox(model.init(rng, sample)["params"])
        return training.init_grid_state(params, tx, [(3e-4, 0.1)], total_steps=1000,
                                        rng=jax.random.key_data(rng))

    state, shardings = loop.create_state(part, create, jax.random.key(0),
                                         params_specs=sharding.param_specs(model, sample))
    t0 = time.perf_counter()
    programs = loop.compile_programs(model, tx, part, state, shardings, batch_shape=(b, length),
                                     eval_shape=(1, b, length), vmapped=False,
                                     precision="bfloat16")
    compile_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    tokens = [rng.integers(0, args.mfu_vocab, (b, length + 1)) for _ in range(4)]
    batches = [programs.place({"inputs": t[:, :-1], "targets": t[:, 1:]}) for t in tokens]
    walls = []
    for _ in range(args.repeats):
        wall, _, state = time_steps(lambda s, x: programs.train(s, x)[0], state, batches,
                                     args.mfu_steps)
        walls.append(wall / args.mfu_steps)
    step_s = statistics.median(walls)
    flops = 3 * rung.forward_flops(length) * b
    measured = matmul_peak(tuple(int(n) for n in args.matmul_sizes.split(",")))["flops_per_s"]
    table = peaks[1]["bfloat16"] if peaks else None
    return {"rung": rung.name, "params": rung.params, "layers": " ".join(rung.layers),
            "batch": b, "seq_len": length, "precision": "bfloat16", "compile_s": compile_s,
            "step_s": step_s, "tokens_per_s": b * length / step_s,
            "model_flops_per_step": flops, "flops_per_s": flops / step_s,
            "table_peak_flops_per_s": table, "mfu_of_table_peak": _fraction(flops / step_s, table),
            "measured_matmul_peak_flops_per_s": measured,
            "mfu_of_measured_peak": _fraction(flops / step_s, measured)}


# --------------------------------------------------------------------------------------- table

def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def _rate(value, unit):
    if value is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {prefix}{unit}"
    return f"{value:.1f} {unit}"


def table_lines(report: dict) -> list[str]:
    """The one Markdown table: | section | case | time | rate | of peak | note |."""
    lines = ["| section | case | time | rate | of peak | note |", "|---|---|---|---|---|---|"]
    for r in report.get("kernels", []):
        case = f"{r['op']} {r['dtype']} B{r['batch']} D{r['dim']} L{r['seq_len']} {r['impl']}"
        if r["error"]:
            lines.append(f"| kernels | {case} | - | - | - | {r['error']} |")
            continue
        speed = f"{r['speedup_fwd_bwd']:.2f}x the XLA f+b" if r["speedup_fwd_bwd"] else ""
        lines.append(
            f"| kernels | {case} | fwd {r['fwd_ms']:.3f} ms, f+b {r['fwd_bwd_ms']:.3f} ms | "
            f"f+b {_rate(r['fwd_bwd_bytes_per_s'], 'B/s')}, "
            f"{_rate(r['fwd_bwd_flops_per_s'], 'FLOP/s')} | "
            f"bw fwd {_pct(r['fwd_of_peak_bandwidth'])} f+b {_pct(r['fwd_bwd_of_peak_bandwidth'])}"
            f"; {r['flop_unit']} f+b {_pct(r['fwd_bwd_of_peak_flops'])} | {speed} |")
    info = report.get("protocol_setup")
    for r in report.get("protocol", []):
        lines.append(
            f"| protocol | {MODE_NAMES[r['mode']]}: {r['runs']} runs | compile "
            f"{r['compile_s']:.1f} s; {1e3 * r['s_per_run_step']:.2f} ms per run-step, "
            f"{r['s_per_run'] / 60:.1f} min per {info['steps_per_run']:,}-step run | "
            f"{r['grid_steps_per_s']:.2f} grid steps/s, {r['run_steps_per_s']:.1f} run-steps/s |"
            f" - | {info['layers']!r} {info['params']:,} params, {info['task']} B"
            f"{info['batch_size']} L{info['length']} {info['precision']}; CPU "
            f"{r['cpu_s_per_grid_step']:.2f} s per grid step |")
    est = report.get("estimate")
    if est:
        stop = ("no early stop" if est["early_stop"] == 1.0 else
                "each run trains that share of its steps")
        for r in est["rows"]:
            lines.append(
                f"| estimate | full protocol, {MODE_NAMES[r['mode']]} | {r['total_hours']:.2f} h "
                f"(train {r['train_hours']:.2f} h + compile {r['compile_hours']:.2f} h) | - | - | "
                f"{est['settings']} settings x 6 runs, <= {est['max_steps_per_run']:,} steps "
                f"each, scaled by tokens per step; early-stop factor {est['early_stop']:g} "
                f"({stop}); {est['shape_families']} compiles |")
    m = report.get("mfu")
    if m:
        peak = m["table_peak_flops_per_s"]
        table = ("-" if peak is None else
                 f"{_pct(m['mfu_of_table_peak'])} of {_rate(peak, 'FLOP/s')}")
        lines.append(
            f"| mfu | {m['rung']} ({m['params'] / 1e6:.1f}M) bf16 B{m['batch']} L{m['seq_len']} | "
            f"step {1e3 * m['step_s']:.1f} ms (compile {m['compile_s']:.0f} s) | "
            f"{_rate(m['tokens_per_s'], 'tok/s')}, {_rate(m['flops_per_s'], 'FLOP/s')} | "
            f"table {table}; measured {_pct(m['mfu_of_measured_peak'])} of "
            f"{_rate(m['measured_matmul_peak_flops_per_s'], 'FLOP/s')} | "
            f"3 x forward FLOPs per step |")
    return lines


# ---------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true",
                   help="every size shrunk, one repeat, unoptimised compiles (a CPU check that "
                        "every section runs, ~1 minute; its figures mean nothing)")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--repeats", type=int, default=3, help="timings per protocol mode and of MFU")
    p.add_argument("--kernel-batch", type=int, default=8)
    p.add_argument("--kernel-dim", type=int, default=1536)
    p.add_argument("--kernel-length", type=int, default=4096)
    p.add_argument("--kernel-dtypes", default="float32,bfloat16")
    p.add_argument("--n-state", type=int, default=16, help="selective-scan state size")
    p.add_argument("--head-dim", type=int, default=64, help="attention kernels' head width")
    p.add_argument("--kernel-repeats", type=int, default=10)
    p.add_argument("--kernel-warmup", type=int, default=2)
    p.add_argument("--layers", default="hyena swiglu mh-attention swiglu")
    p.add_argument("--task", default="in-context-recall")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--num-heads", type=int, default=None, help="mh-attention heads (default 16)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the full preset's")
    p.add_argument("--seq-len", type=int, default=None, help="default: the setting's")
    p.add_argument("--precision", default=None, help="default: the full preset's (bfloat16)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per protocol mode, repeat")
    p.add_argument("--early-stop", type=float, default=1.0,
                   help="share of its steps a run trains before it stops early (1.0: none)")
    p.add_argument("--mfu-params", type=float, default=125e6)
    p.add_argument("--mfu-spec", default="paper", help="mad_jax.scaling.ladders spec")
    p.add_argument("--mfu-vocab", type=int, default=50304)
    p.add_argument("--mfu-batch", type=int, default=8)
    p.add_argument("--mfu-seq-len", type=int, default=2048)
    p.add_argument("--mfu-steps", type=int, default=10)
    p.add_argument("--matmul-sizes", default="4096,8192,16384")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; valid: {','.join(SECTIONS)}")
    if not 0 < args.early_stop <= 1:
        p.error(f"--early-stop must be in (0, 1], got {args.early_stop}")
    if args.tiny:
        args.repeats, args.steps = 1, 2
        args.kernel_batch, args.kernel_dim, args.kernel_length = 1, 16, 32
        args.kernel_dtypes, args.n_state, args.head_dim = "float32", 4, 16
        args.kernel_repeats, args.kernel_warmup = 1, 0
        args.dim, args.num_heads, args.batch_size, args.seq_len = 16, 2, 8, 32
        args.layers = "mh-attention swiglu"  # one sequence mixer: every mode, compiled fast
        args.mfu_params, args.mfu_spec, args.mfu_vocab = 2e4, "smoke", 64
        args.mfu_batch, args.mfu_seq_len, args.mfu_steps = 2, 32, 2
        args.matmul_sizes = "128"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    sections = args.sections.split(",")
    if args.tiny:
        use_fast_compiles()
    device = jax.devices()[0]
    kind = device.device_kind
    peaks = table_peaks(kind)
    cfg = protocol.train_config("full")
    print(f"device: {kind} ({jax.default_backend()}, {jax.device_count()} devices); table peaks: "
          + ("unknown (no fractions)" if peaks is None else
             f"{peaks[0] / 1e9:.0f} GB/s, bf16 {peaks[1]['bfloat16'] / 1e12:.0f} TFLOP/s"),
          flush=True)
    report = {"device_kind": kind, "backend": jax.default_backend(), "jax": jax.__version__,
              "host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
              "load_avg": os.getloadavg(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "args": vars(args), "peak_bytes_per_s": peaks[0] if peaks else None,
              "peak_flops": peaks[1] if peaks else None, "section_wall_s": {}}
    t_all = time.perf_counter()
    if "kernels" in sections:
        t0 = time.perf_counter()
        report["kernels"] = kernel_rows(args, peaks)
        report["section_wall_s"]["kernels"] = time.perf_counter() - t0
    if "protocol" in sections or "estimate" in sections:
        t0 = time.perf_counter()
        report["protocol"], report["protocol_setup"] = protocol_rows(args, cfg)
        report["section_wall_s"]["protocol"] = time.perf_counter() - t0
        print("  protocol done", flush=True)
        if "estimate" in sections:
            report["estimate"] = estimate_rows(report["protocol"], report["protocol_setup"], cfg,
                                               args.early_stop)
    if "mfu" in sections:
        t0 = time.perf_counter()
        report["mfu"] = mfu_row(args, peaks)
        report["section_wall_s"]["mfu"] = time.perf_counter() - t0
    report["wall_s"] = time.perf_counter() - t_all
    lines = table_lines(report)
    report["table"] = "\n".join(lines)
    print()
    print(report["table"])
    print(f"\n{jax.default_backend()} {kind}, load avg {os.getloadavg()[0]:.1f}; sections took "
          + ", ".join(f"{k} {v:.0f} s" for k, v in report["section_wall_s"].items())
          + f"; {report['wall_s']:.0f} s in all")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"device_report-{kind.replace(' ', '_').replace('/', '_')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()

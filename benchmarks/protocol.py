"""Steps/s of the hyperparameter grid: 6 runs vmapped in one program vs the 6 runs one after
another.

    .venv/bin/python -m benchmarks.protocol          # default hybrid, in-context recall
    .venv/bin/python -m benchmarks.protocol --layers="mh-attention swiglu" --batch_size=64

Both modes train the same model on the same batches with the same compiled step semantics; a
"grid step" advances all six runs by one step. Prints a Markdown table and writes it, with the
machine's details, to benchmarks/results/protocol-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mad_jax import models, sharding, tasks, training
from mad_jax.training import loop


def time_steps(step, states, batches, n_steps):
    """(wall s, process CPU s, states) for n_steps grid steps; `step(states, batch) -> states`
    advances every run once (the states are donated, so the new ones come back). CPU seconds (all
    threads) are what a shared, loaded machine cannot distort."""
    states = step(states, batches[0])  # warm-up (first execution allocates)
    jax.block_until_ready(states)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n_steps):
        states = step(states, batches[(i + 1) % len(batches)])
    jax.block_until_ready(states)
    return time.perf_counter() - t0, time.process_time() - c0, states


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="hyena swiglu mh-attention swiglu")
    p.add_argument("--task", default="in-context-recall")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed grid steps per mode and repeat")
    p.add_argument("--repeats", type=int, default=3,
                   help="timings per mode, the modes taking turns; the table shows medians")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args()

    setting = tasks.settings(args.task)[0]
    setting.update(num_train_examples=4 * args.batch_size, num_test_examples=args.batch_size)
    inputs, targets = tasks.load(args.task, setting, "train", seed=0)
    test = loop.pad_eval_set(*tasks.load(args.task, setting, "test", seed=0), args.batch_size)
    model = models.build(args.layers, vocab_size=setting["vocab_size"],
                         max_length=inputs.shape[1], dim=args.dim,
                         backbone=tasks.TASK_BACKBONE[args.task])
    host_batches = [{"inputs": inputs[i::4][:args.batch_size],
                     "targets": targets[i::4][:args.batch_size]} for i in range(4)]
    tx = training.make_optimizer()
    params = sharding.unbox(training.init_params(model, jax.random.key(0),
                                                 jnp.asarray(host_batches[0]["inputs"][:1])))
    specs = sharding.param_specs(model, jnp.asarray(host_batches[0]["inputs"][:1]))
    rng = jax.random.key_data(jax.random.key(1))
    grid = training.DEFAULT_GRID
    rows = []

    def programs_for(runs, vmapped):
        """(grid state, compiled programs, compile seconds) of `runs` on one device."""
        part = loop.make_partitioner("", group_size=len(runs),
                                     batch_sizes={"batch_size": args.batch_size})
        state, shardings = loop.create_state(
            part, lambda p, r: training.init_grid_state(p, tx, runs, total_steps=1000, rng=r),
            params, rng, params_specs=specs)
        t0 = time.perf_counter()
        programs = loop.compile_programs(model, tx, part, state, shardings,
                                         batch_shape=(args.batch_size, inputs.shape[1]),
                                         eval_shape=test[0].shape, vmapped=vmapped)
        return state, programs, time.perf_counter() - t0

    # vmapped: one program, six runs.
    state, programs, vmapped_compile_s = programs_for(grid, True)
    train_c = programs.train
    batches = [programs.place(b) for b in host_batches]
    # sequential: six single-run states, the same single-run program called six times per step.
    singles = [programs_for([g], False) for g in grid]
    states = [s for s, _, _ in singles]
    single_c = singles[0][1].train
    sequential_compile_s = singles[0][2]

    timings = {"vmapped": [], "sequential": []}
    for _ in range(args.repeats):  # the two modes take turns, so load changes hit both alike
        wall, cpu, state = time_steps(lambda s, b: train_c(s, b)[0], state, batches, args.steps)
        timings["vmapped"].append((wall, cpu))
        wall, cpu, states = time_steps(lambda ss, b: [single_c(s, b)[0] for s in ss], states,
                                        batches, args.steps)
        timings["sequential"].append((wall, cpu))
    for name, key, compile_s in (("vmapped (1 program, 6 runs)", "vmapped", vmapped_compile_s),
                                 ("sequential (6 runs one after another)", "sequential",
                                  sequential_compile_s)):
        wall = statistics.median(w for w, _ in timings[key])
        cpu = statistics.median(c for _, c in timings[key])
        rows.append((name, compile_s, args.steps / wall, cpu / args.steps))

    base = rows[1][2]
    n_params = training.count_params(params)
    header = (f"grid of {len(grid)} (lr, wd) runs; {args.layers!r} dim {args.dim} "
              f"({n_params:,} params); {args.task} L={inputs.shape[1]}, batch {args.batch_size}; "
              f"{jax.devices()[0].platform} {jax.devices()[0].device_kind} x{jax.device_count()}, "
              f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}; medians of "
              f"{args.repeats} x {args.steps} steps")
    lines = [header, "", "| mode | compile s | grid steps/s | run steps/s | speed-up | "
             "CPU s per grid step | speed-up in CPU s |", "|---|---|---|---|---|---|---|"]
    for name, c, sps, cpu in rows:
        lines.append(f"| {name} | {c:.1f} | {sps:.3f} | {sps * len(grid):.2f} | "
                     f"{sps / base:.2f}x | {cpu:.2f} | {rows[1][3] / cpu:.2f}x |")
    print("\n".join(lines), flush=True)
    os.makedirs(args.out, exist_ok=True)
    record = {"args": vars(args), "params": n_params, "platform": platform.platform(),
              "device": str(jax.devices()[0]), "load_avg": os.getloadavg(),
              "rows": [{"mode": n, "compile_s": c, "grid_steps_per_s": s, "cpu_s_per_grid_step": u}
                       for n, c, s, u in rows],
              "timings_wall_cpu_s": timings,
              "table": "\n".join(lines)}
    path = os.path.join(args.out, f"protocol-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()

"""Sharding benchmarks: a per-strategy sanity table on 8 simulated devices, and single-device MFU.

    python -m benchmarks.sharding            # 8 simulated CPU devices: every mesh strategy
    python -m benchmarks.sharding --mfu      # the first accelerator: MFU of a ~125M hybrid

Table mode trains a small hybrid for a few steps under each mesh (one device, data, fsdp, tensor,
their mixes, and the sweep axis with 8 vmapped runs) and reports compile time, median step time,
per-device bytes of the parameters and of the whole train state (params + AdamW moments), and the
last loss against the one-device loss. Simulated devices share the host's cores, so step times are
a sanity check of the programs, not a speed claim.

MFU mode measures the device's bf16 matmul peak (the best of a few large square matmuls) in the
same run, then trains a GPT-2-small-sized striped hybrid ("(hyena swiglu mh-attention swiglu)x3",
width 768, vocabulary 50304: 125M parameters) in bf16 compute with float32 parameters, and reports
MFU = 3 x forward FLOPs (mad_jax.models.flops: every layer's matmuls, scores, filters, plus the
unembedding) x sequences / step time / measured peak.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import mad_jax
from mad_jax import sharding, training

STRATEGIES = ("data:1", "data:8", "fsdp:8", "tensor:8", "data:4,fsdp:2", "fsdp:4,tensor:2",
              "data:2,fsdp:2,tensor:2", "sweep:1", "sweep:8")  # sweep: the 8-run grid, vmapped


def _tokens(rng, batch, seq_len, vocab):
    x = rng.integers(0, vocab, (batch, seq_len + 1)).astype(np.int32)
    return {"inputs": x[:, :-1], "targets": x[:, 1:]}


def _per_device_bytes(tree) -> int:
    """Bytes of `tree` held by the first device (a replicated leaf counts in full)."""
    return int(sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree)))


def _setup(layers, dim, vocab, seq_len, layer_configs, dtype=jnp.float32):
    model = mad_jax.models.build(layers, vocab_size=vocab, max_length=seq_len, dim=dim,
                                 layer_configs=layer_configs, dtype=dtype)
    tx = training.make_optimizer()
    sample = jnp.zeros((1, seq_len), jnp.int32)

    create = training.make_create_state(model, tx, sample, learning_rate=1e-3, weight_decay=0.1,
                                        total_steps=1000)

    def create_grid(rng):
        params = sharding.unbox(model.init(rng, sample)["params"])
        grid = [(lr, wd) for lr in (1e-4, 3e-4, 1e-3, 3e-3) for wd in (0.0, 0.1)]
        return training.init_grid_state(params, tx, grid, total_steps=1000,
                                        rng=jax.random.key_data(rng))

    return model, tx, create, create_grid, sharding.param_specs(model, sample)


def table(args) -> list[dict]:
    """Every strategy on the simulated devices: compile, step time, bytes per device, loss."""
    layers, configs = args.layers, {"mh-attention": {"num_heads": 4}}
    model, tx, create, create_grid, specs = _setup(layers, args.dim, args.vocab, args.seq_len,
                                                   configs)
    train_step = training.make_train_step(model, tx)
    rng = np.random.default_rng(0)
    batches = [_tokens(rng, args.batch, args.seq_len, args.vocab) for _ in range(args.steps)]
    rows = []
    for mesh in STRATEGIES:
        sweep = mesh.startswith("sweep")
        size = int(np.prod(list(sharding.parse_mesh(mesh).values())))
        part = sharding.Partitioner.create(mesh, devices=jax.devices()[:size])
        state, state_sh = part.init(create_grid if sweep else create, jax.random.key(0),
                                    params_specs=specs, sweep=sweep)
        batch_sh = part.batch_shardings(batches[0])
        step_fn = training.make_grid_train_step(train_step) if sweep else train_step
        step = part.train_step(step_fn, state_sh, batch_sh)
        t0 = time.perf_counter()
        compiled = step.lower(state, part.shard_batch(batches[0], batch_sh)).compile()
        compile_s = time.perf_counter() - t0
        times = []
        for batch in batches:
            batch = part.shard_batch(batch, batch_sh)
            t0 = time.perf_counter()
            with part.activate():
                state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        params = state.runs.params if sweep else state.params
        loss = np.asarray(metrics["loss"])
        rows.append({
            "mesh": sharding.format_mesh(dict(part.mesh.shape)), "devices": size,
            "runs": 8 if sweep else 1, "compile_s": compile_s,
            "step_ms": 1e3 * statistics.median(times[1:] or times),
            "param_bytes_per_device": _per_device_bytes(params),
            "state_bytes_per_device": _per_device_bytes(state),
            "last_loss": float(loss[5] if sweep else loss),  # run 5 of the grid is lr=1e-3, wd=0.1
        })
        print(_format_row(rows[-1], rows[0]), flush=True)
    return rows


def _format_row(row, ref) -> str:
    return (f"| {row['mesh']:<31} | {row['runs']:>4} | {row['compile_s']:>9.1f} | "
            f"{row['step_ms']:>8.1f} | {row['param_bytes_per_device'] / 1e3:>10.1f} | "
            f"{row['state_bytes_per_device'] / 1e3:>10.1f} | "
            f"{row['last_loss']:.6f} ({abs(row['last_loss'] / ref['last_loss'] - 1):.1e}) |")


TABLE_HEADER = ("| mesh                            | runs | compile s |  step ms | params kB/dev "
                "| state kB/dev | last loss (rel. diff to 1 device) |\n"
                "|---|---|---|---|---|---|---|")


def matmul_peak(sizes=(4096, 8192, 16384), dtype=jnp.bfloat16, repeats: int = 10) -> dict:
    """Measured dense matmul FLOP/s: the best over square sizes (timed after a warm-up)."""
    best = {"flops_per_s": 0.0}
    for n in sizes:
        try:
            a = jax.random.normal(jax.random.key(0), (n, n), dtype)
            b = jax.random.normal(jax.random.key(1), (n, n), dtype)
            f = jax.jit(lambda a, b: a @ b)
            f(a, b).block_until_ready()
            t0 = time.perf_counter()
            for _ in range(repeats):
                out = f(a, b)
            out.block_until_ready()
            rate = 2 * n ** 3 * repeats / (time.perf_counter() - t0)
        except Exception as e:  # out of memory on small devices: keep the smaller sizes
            print(f"matmul {n}: {type(e).__name__}", flush=True)
            continue
        print(f"bf16 matmul {n}x{n}: {rate / 1e12:.1f} TFLOP/s", flush=True)
        if rate > best["flops_per_s"]:
            best = {"flops_per_s": rate, "n": n}
    return best


def mfu(args) -> dict:
    """Single-device MFU of a ~125M striped hybrid in bf16 against the measured matmul peak."""
    device = jax.devices()[0]
    peak = matmul_peak(tuple(int(n) for n in args.peak_sizes.split(",")))
    layers, dim, vocab = args.mfu_layers, args.dim, args.vocab
    seq_len, batch = args.seq_len, args.batch
    configs = {"mh-attention": {"num_heads": max(1, dim // 64), "rotary_dim": 64}}  # head width 64
    model, tx, create, _, specs = _setup(layers, dim, vocab, seq_len, configs, dtype=jnp.bfloat16)
    part = sharding.Partitioner.create("data:1", devices=[device])
    state, state_sh = part.init(create, jax.random.key(0), params_specs=specs)
    num_params = mad_jax.models.count_params(state.params)
    rng = np.random.default_rng(0)
    batches = [_tokens(rng, batch, seq_len, vocab) for _ in range(4)]
    batch_sh = part.batch_shardings(batches[0])
    batches = [part.shard_batch(b, batch_sh) for b in batches]
    # One device: logical constraints are no-ops, so jit without the mesh context (`.jitted`).
    step = part.train_step(training.make_train_step(model, tx), state_sh, batch_sh).jitted
    t0 = time.perf_counter()
    for i in range(args.warmup):
        state, metrics = step(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.steps):
        state, metrics = step(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t0) / args.steps
    flops_per_step = 3 * mad_jax.models.flops(layers, dim=dim, seq_len=seq_len, vocab_size=vocab,
                                              layer_configs=configs) * batch
    result = {
        "device": device.device_kind, "layers": layers, "dim": dim, "vocab": vocab,
        "seq_len": seq_len, "batch": batch, "params": num_params, "warmup_s": warmup_s,
        "step_s": step_s, "tokens_per_s": batch * seq_len / step_s,
        "model_flops_per_step": flops_per_step, "achieved_flops_per_s": flops_per_step / step_s,
        "matmul_peak_flops_per_s": peak["flops_per_s"], "matmul_peak_n": peak.get("n"),
        "mfu": flops_per_step / step_s / peak["flops_per_s"], "loss": float(metrics["loss"]),
    }
    print(f"{device.device_kind}: {num_params / 1e6:.1f}M params, batch {batch} x {seq_len}, "
          f"step {step_s * 1e3:.1f} ms, {result['tokens_per_s']:.0f} tokens/s, "
          f"{result['achieved_flops_per_s'] / 1e12:.1f} TFLOP/s of "
          f"{peak['flops_per_s'] / 1e12:.1f} measured bf16 matmul peak: "
          f"MFU {100 * result['mfu']:.1f}%", flush=True)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mfu", action="store_true", help="single-device MFU on the first accelerator")
    p.add_argument("--layers", default="hyena swiglu mh-attention swiglu", help="table model")
    p.add_argument("--mfu-layers", default="(hyena swiglu mh-attention swiglu)x3", help="MFU model")
    p.add_argument("--dim", type=int, default=None, help="width; default 64 (table), 768 (MFU)")
    p.add_argument("--vocab", type=int, default=None, help="default 64 (table), 50304 (MFU)")
    p.add_argument("--peak-sizes", default="4096,8192,16384", help="MFU: square matmul sizes")
    p.add_argument("--seq-len", type=int, default=None, help="default 64 (table), 2048 (MFU)")
    p.add_argument("--batch", type=int, default=None, help="default 32 (table), 8 (MFU)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps; default 5 (table), 20 (MFU)")
    p.add_argument("--warmup", type=int, default=3, help="MFU: untimed steps (compile included)")
    p.add_argument("--out", default=None, help="JSON results (default benchmarks/results/...)")
    args = p.parse_args(argv)
    args.dim = args.dim or (768 if args.mfu else 64)
    args.vocab = args.vocab or (50304 if args.mfu else 64)
    args.seq_len = args.seq_len or (2048 if args.mfu else 64)
    args.batch = args.batch or (8 if args.mfu else 32)
    args.steps = args.steps or (20 if args.mfu else 5)
    if args.mfu:
        results = mfu(args)
        name = f"sharding-mfu-{jax.devices()[0].device_kind.replace(' ', '_')}.json"
    else:
        print(f"{args.layers!r}, width {args.dim}, batch {args.batch} x {args.seq_len}, "
              f"{args.steps} steps on {jax.device_count()} simulated "
              f"{jax.devices()[0].platform} devices")
        print(TABLE_HEADER)
        results = table(args)
        name = "sharding-cpu8.json"
    out = args.out or os.path.join(os.path.dirname(__file__), "results", name)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"date": datetime.datetime.now().isoformat(timespec="seconds"),
                   "host": platform.node(), "jax": jax.__version__, "args": vars(args),
                   "results": results}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    if "--mfu" not in sys.argv:  # before the backend starts: 8 CPU devices for the table
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_force_host_platform_device_count=8").strip()
    main()

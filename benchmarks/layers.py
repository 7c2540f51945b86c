"""Forward+backward time of every registered layer at width 128 on this machine.

    .venv/bin/python -m benchmarks.layers                       # batch 128, seq_len 128 and 1024
    .venv/bin/python -m benchmarks.layers --batch=8 --lengths=128 --repeats=3   # a quick look

Times one jitted `grad(mean(layer(x)^2))` with respect to params and input, the layer alone (no
norm, no residual). Prints a Markdown table of median milliseconds over `--repeats` timed calls
(after one warm-up) with the layer's parameters, state size and forward FLOPs, and writes JSON to
benchmarks/results/layers-<backend>.json.
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

from mad_jax import layers, models


def time_layer(name: str, *, batch: int, seq_len: int, dim: int, repeats: int) -> dict:
    """Median wall ms of forward+backward of layer `name` on a [batch, seq_len, dim] input."""
    layer = layers.make_layer(name)
    x_BxLxD = jax.random.normal(jax.random.key(0), (batch, seq_len, dim), jnp.float32)
    params = layer.init(jax.random.key(1), x_BxLxD[:1])["params"]

    @jax.jit
    def fwd_bwd(params, x_BxLxD):
        def loss(params, x_BxLxD):
            y_BxLxD, _ = layer.apply({"params": params}, x_BxLxD, mutable=["losses"])
            return jnp.mean(jnp.square(y_BxLxD))
        return jax.grad(loss, argnums=(0, 1))(params, x_BxLxD)

    t0 = time.perf_counter()
    jax.block_until_ready(fwd_bwd(params, x_BxLxD))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fwd_bwd(params, x_BxLxD))
        times.append(1e3 * (time.perf_counter() - t0))
    return {"layer": name, "batch": batch, "seq_len": seq_len, "dim": dim,
            "median_ms": statistics.median(times), "min_ms": min(times), "compile_s": compile_s,
            "params": models.count_params(params),
            "state_size": models.layer_state_size(name, dim=dim, seq_len=seq_len),
            "forward_flops": models.layer_flops(name, dim=dim, seq_len=seq_len)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--lengths", default="128,1024", help="comma-separated sequence lengths")
    p.add_argument("--layers", default="", help="comma-separated names (default: every layer)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args()

    names = [n for n in args.layers.split(",") if n] or sorted(layers.LAYERS)
    lengths = [int(n) for n in args.lengths.split(",")]
    print(f"# forward+backward per layer, batch {args.batch}, width {args.dim}, "
          f"{jax.default_backend()} ({jax.devices()[0].device_kind}), median of {args.repeats}")
    print("| layer | seq_len | median ms | min ms | compile s | params | state | fwd FLOPs |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for seq_len in lengths:
        for name in names:
            try:
                row = time_layer(name, batch=args.batch, seq_len=seq_len, dim=args.dim,
                                 repeats=args.repeats)
            except Exception as e:  # e.g. out of memory: record and go on
                row = {"layer": name, "seq_len": seq_len, "error": " ".join(str(e).split())[:200]}
                print(f"| {name} | {seq_len} | failed: {row['error'][:60]} | | | | | |", flush=True)
            else:
                print(f"| {name} | {seq_len} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | "
                      f"{row['compile_s']:.1f} | {row['params']:,} | {row['state_size']:,} | "
                      f"{row['forward_flops']:,} |", flush=True)
            rows.append(row)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"layers-{jax.default_backend()}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"machine": platform.platform(), "processor": platform.processor(),
                   "cpu_count": os.cpu_count(), "jax": jax.__version__,
                   "device": jax.devices()[0].device_kind, "batch": args.batch, "dim": args.dim,
                   "repeats": args.repeats, "rows": rows}, f, indent=1)
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Benchmark the Pallas kernels against their XLA references.

    python -m benchmarks.kernels                 # full sweep on the local accelerator
    python -m benchmarks.kernels --quick         # tiny CPU smoke run (interpret mode), seconds

For each op (causal_conv vs the FFT reference, selective_scan vs the associative-scan reference,
linear_attention (with per-channel decay) and delta_rule (with a scalar gate) vs their chunked
references; the attention ops split D into D / --head-dim heads), dtype, width D and length L it
times the forward pass and forward+backward (one vjp with a fixed
cotangent), reports medians over --repeats runs, and prints achieved bytes/s and FLOP/s as fractions
of the device's peak (looked up from the device kind, or --peak-gbps / --peak-tflops). Results go to
a JSON file (default benchmarks/results/kernels-<device>.json).

Byte counts are the compulsory HBM traffic of the op (inputs read once, outputs written once), so
bytes/s / peak is "fraction of the memory-bandwidth bound". FLOP counts are those of each
implementation's own algorithm (Toeplitz matmuls for the conv kernel, 5 N log2 N per real FFT for
the reference, a few FLOPs per state element and step for the scans, the chunked matmuls for the
attention ops).

    python -m benchmarks.kernels --ops linear_attention,delta_rule --dims 1024 --head-dim 64
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels as pk
from mad_jax import ops

# Peak numbers per device kind (substring match on jax's device_kind, first match wins):
# (HBM bytes/s, {compute dtype: dense FLOP/s}). float32 means the matrix-unit rate the kernels use
# by default for float32 operands (TF32 on NVIDIA); "vector" is the non-matrix float32 rate.
PEAKS = {
    "H100 PCIe": (2.0e12, {"float32": 378e12, "bfloat16": 756e12, "vector": 51e12}),
    "H100": (3.35e12, {"float32": 495e12, "bfloat16": 989e12, "vector": 67e12}),
    "H200": (4.8e12, {"float32": 495e12, "bfloat16": 989e12, "vector": 67e12}),
    "A100-SXM4-80GB": (2.04e12, {"float32": 156e12, "bfloat16": 312e12, "vector": 19.5e12}),
    "A100": (1.555e12, {"float32": 156e12, "bfloat16": 312e12, "vector": 19.5e12}),
    "L4": (0.3e12, {"float32": 60e12, "bfloat16": 121e12, "vector": 30e12}),
    "TPU v4": (1.2e12, {"float32": 275e12, "bfloat16": 275e12, "vector": 10e12}),
    "TPU v5 lite": (0.819e12, {"float32": 197e12, "bfloat16": 197e12, "vector": 10e12}),
    "TPU v5e": (0.819e12, {"float32": 197e12, "bfloat16": 197e12, "vector": 10e12}),
    "TPU v5p": (2.765e12, {"float32": 459e12, "bfloat16": 459e12, "vector": 20e12}),
    "TPU v5": (2.765e12, {"float32": 459e12, "bfloat16": 459e12, "vector": 20e12}),
    "TPU v6": (1.64e12, {"float32": 918e12, "bfloat16": 918e12, "vector": 20e12}),
    "cpu": (50e9, {"float32": 1e12, "bfloat16": 1e12, "vector": 1e12}),
}


def device_peaks(kind: str, gbps: float | None, tflops: float | None):
    bandwidth, flops = next((v for k, v in PEAKS.items() if k.lower() in kind.lower()),
                            PEAKS["cpu"])
    flops = dict(flops)
    if gbps:
        bandwidth = gbps * 1e9
    if tflops:
        flops = {k: tflops * 1e12 for k in flops}
    return bandwidth, flops


@dataclasses.dataclass
class Case:
    op: str
    impl: str
    dtype: str
    batch: int
    dim: int
    seq_len: int
    n_state: int | None = None
    head_dim: int | None = None
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    fwd_bytes: float = 0.0
    fwd_bwd_bytes: float = 0.0
    fwd_flops: float = 0.0
    fwd_bwd_flops: float = 0.0
    flop_unit: str = "float32"
    error: str | None = None


def _median_ms(fn: Callable, args, repeats: int, warmup: int) -> float:
    compiled = jax.jit(fn).lower(*args).compile()
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _fwd_bwd(fn):
    def run(*args):
        out, vjp = jax.vjp(fn, *args)
        return vjp(jnp.ones_like(out))
    return run


def _conv_models(case: Case, itemsize: int, block_t: int):
    b, l, d = case.batch, case.seq_len, case.dim
    io = b * l * d * itemsize
    case.fwd_bytes = 2 * io + l * d * itemsize                 # x, h in; y out
    case.fwd_bwd_bytes = case.fwd_bytes + 3 * io + 2 * l * d * itemsize  # + dy, x in; dx out; h, dh
    if case.impl == "pallas":  # T x T Toeplitz tiles for lag blocks 0..i: (L^2 + L T) / 2 MACs
        fwd = 1.0 * b * d * (l * l + l * block_t)          # per (b, d); dx and dh cost the same
        case.fwd_flops, case.fwd_bwd_flops = fwd, 3 * fwd
    else:  # rfft(x), irfft(y) of length ops.fft_size(L) (about 2L), plus the spectral product
        n = ops.fft_size(l)
        fft = 2.5 * n * math.log2(n)
        case.fwd_flops = b * d * (2 * fft + 6 * (n // 2 + 1))
        case.fwd_bwd_flops = case.fwd_flops + b * d * (4 * fft + 12 * (n // 2 + 1))
    case.flop_unit = "float32" if itemsize == 4 else "bfloat16"
    if case.impl == "xla":
        case.flop_unit = "vector"


def _scan_models(case: Case, itemsize: int):
    b, l, d, n = case.batch, case.seq_len, case.dim, case.n_state
    seq, state = b * l * d * itemsize, b * l * n * itemsize
    case.fwd_bytes = 3 * seq + 2 * state + d * n * 4            # x, dt, B, C in; y out
    # backward: x, dt, dy in; dx, ddt out; B, C in; dB, dC out
    case.fwd_bwd_bytes = case.fwd_bytes + 5 * seq + 4 * state
    case.fwd_flops = 7.0 * b * l * d * n  # exp, 2 mul, add (update); mul, add (read)
    case.fwd_bwd_flops = case.fwd_flops + 2 * case.fwd_flops + 14.0 * b * l * d * n
    case.flop_unit = "vector"


def _attention_models(case: Case, itemsize: int, chunk: int, delta: bool):
    b, l, d, dh = case.batch, case.seq_len, case.dim, case.head_dim
    io = b * l * d * itemsize
    gates = b * l * (d // dh if delta else d) * 4            # float32 log decay / gate
    betas = b * l * (d // dh) * itemsize if delta else 0
    case.fwd_bytes = 4 * io + gates + betas                  # q, k, v, gates in; o out
    case.fwd_bwd_bytes = case.fwd_bytes + 7 * io + 2 * (gates + betas)  # + do; dq, dk, dv, dg
    per_token = (6 * chunk * dh + 4 * chunk * dh + 6 * dh * dh + 2 * chunk * chunk if delta
                 else 2 * chunk * dh + 2 * chunk * dh + 4 * dh * dh)
    case.fwd_flops = float(b * l * (d // dh) * per_token)
    case.fwd_bwd_flops = 3 * case.fwd_flops
    case.flop_unit = "float32" if itemsize == 4 else "bfloat16"


def run_case(case: Case, args, kernel_fn, ref_fn, repeats, warmup):
    fn = kernel_fn if case.impl == "pallas" else ref_fn
    try:
        case.fwd_ms = _median_ms(fn, args, repeats, warmup)
        case.fwd_bwd_ms = _median_ms(_fwd_bwd(fn), args, repeats, warmup)
    except Exception as e:  # noqa: BLE001  (OOM, lowering errors: recorded, the sweep goes on)
        case.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return case


def conv_cases(batch, dim, seq_len, dtype, repeats, warmup, interpret, config):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, seq_len, dim)), dtype)
    h = jnp.asarray(rng.standard_normal((seq_len, dim)) / seq_len, dtype)
    kernel = lambda x, h: pk.causal_conv(x, h, interpret=interpret, config=config)  # noqa: E731
    out = []
    for impl in ("pallas", "xla"):
        case = Case("causal_conv", impl, jnp.dtype(dtype).name, batch, dim, seq_len)
        _conv_models(case, jnp.dtype(dtype).itemsize, config.block_t or 64)
        out.append(run_case(case, (x, h), kernel, ops.fft_causal_conv, repeats, warmup))
    return out


def scan_cases(batch, dim, seq_len, n_state, dtype, repeats, warmup, interpret, config):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, seq_len, dim)), dtype)
    dt = jnp.asarray(np.exp(rng.uniform(-7, -2.3, (batch, seq_len, dim))), dtype)
    A = jnp.asarray(-np.exp(rng.standard_normal((dim, n_state))), jnp.float32)
    B = jnp.asarray(rng.standard_normal((batch, seq_len, n_state)), dtype)
    C = jnp.asarray(rng.standard_normal((batch, seq_len, n_state)), dtype)
    kernel = lambda *a: pk.selective_scan(*a, interpret=interpret, config=config)  # noqa: E731
    out = []
    for impl in ("pallas", "xla"):
        case = Case("selective_scan", impl, jnp.dtype(dtype).name, batch, dim, seq_len, n_state)
        _scan_models(case, jnp.dtype(dtype).itemsize)
        out.append(run_case(case, (x, dt, A, B, C), kernel, ops.associative_selective_scan, repeats,
                            warmup))
    return out


def _attention_inputs(batch, dim, seq_len, head_dim, dtype, delta):
    if dim % head_dim:
        raise ValueError(f"--dims must be multiples of --head-dim {head_dim}, got {dim}")
    rng = np.random.default_rng(0)
    shape = (batch, dim // head_dim, seq_len, head_dim)
    q = rng.standard_normal(shape) / np.sqrt(head_dim)
    k = rng.standard_normal(shape)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal(shape)
    args = tuple(jnp.asarray(a, dtype) for a in (q, k, v))
    if delta:
        beta = jnp.asarray(rng.uniform(0.1, 0.9, shape[:3]), dtype)
        gate = jnp.asarray(-np.exp(rng.uniform(-7, 0, shape[:3])), jnp.float32)
        return args + (beta, gate)
    return args + (jnp.asarray(-np.exp(rng.uniform(-7, 0, shape)), jnp.float32),)


def linear_attention_cases(batch, dim, seq_len, head_dim, dtype, repeats, warmup, interpret,
                           config):
    args = _attention_inputs(batch, dim, seq_len, head_dim, dtype, delta=False)
    kernel = lambda *a: pk.linear_attention(*a, interpret=interpret, config=config)  # noqa: E731

    def ref(q, k, v, g):
        return ops.linear_attention_chunked(q, k, v, log_decay_BxHxLxK=g)

    out = []
    for impl in ("pallas", "xla"):
        case = Case("linear_attention", impl, jnp.dtype(dtype).name, batch, dim, seq_len,
                    head_dim=head_dim)
        _attention_models(case, jnp.dtype(dtype).itemsize, config.chunk if impl == "pallas"
                          else 64, delta=False)
        out.append(run_case(case, args, kernel, ref, repeats, warmup))
    return out


def delta_rule_cases(batch, dim, seq_len, head_dim, dtype, repeats, warmup, interpret, config):
    from mad_jax.ops.delta_rule import delta_rule_chunked

    args = _attention_inputs(batch, dim, seq_len, head_dim, dtype, delta=True)
    kernel = lambda *a: pk.delta_rule(*a, interpret=interpret, config=config)  # noqa: E731

    def ref(q, k, v, b, g):
        return delta_rule_chunked(q, k, v, b, log_gate_BxHxL=g)

    out = []
    for impl in ("pallas", "xla"):
        case = Case("delta_rule", impl, jnp.dtype(dtype).name, batch, dim, seq_len,
                    head_dim=head_dim)
        _attention_models(case, jnp.dtype(dtype).itemsize, config.chunk if impl == "pallas"
                          else 64, delta=True)
        out.append(run_case(case, args, kernel, ref, repeats, warmup))
    return out


def _fmt(v, spec):
    return format("-", spec.replace(".2f", "")) if v is None else format(v, spec)


def print_table(cases, bandwidth, flops):
    header = (f"{'op':<17}{'dtype':<9}{'D':>6}{'L':>7} {'impl':<7}{'fwd ms':>9}{'f+b ms':>9}"
              f"{'speedup':>9}{'GB/s':>8}{'%bw':>6}{'TFLOP/s':>9}{'%peak':>7}{'x bound':>8}")
    print(header)
    print("-" * len(header))
    by_key = {}
    for c in cases:
        by_key.setdefault((c.op, c.dtype, c.dim, c.seq_len), {})[c.impl] = c
    for key, impls in by_key.items():
        ref = impls.get("xla")
        for impl, c in impls.items():
            if c.error:
                print(f"{c.op:<17}{c.dtype:<9}{c.dim:>6}{c.seq_len:>7} {impl:<7}  {c.error}")
                continue
            speed = (ref.fwd_bwd_ms / c.fwd_bwd_ms
                     if impl == "pallas" and ref and ref.fwd_bwd_ms else None)
            secs = c.fwd_bwd_ms / 1e3
            gbs = c.fwd_bwd_bytes / secs / 1e9
            tfl = c.fwd_bwd_flops / secs / 1e12
            bound = c.fwd_bwd_bytes / bandwidth * 1e3
            print(f"{c.op:<17}{c.dtype:<9}{c.dim:>6}{c.seq_len:>7} {impl:<7}{c.fwd_ms:>9.3f}"
                  f"{c.fwd_bwd_ms:>9.3f}{_fmt(speed, '>9.2f')}{gbs:>8.1f}"
                  f"{100 * gbs * 1e9 / bandwidth:>6.1f}{tfl:>9.2f}"
                  f"{100 * tfl * 1e12 / flops[c.flop_unit]:>7.1f}{c.fwd_bwd_ms / bound:>8.1f}")
    print("speedup: reference f+b time / kernel f+b time; %bw, %peak, x bound: forward+backward "
          "against the device peaks (x bound = time / compulsory-traffic time).")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run (interpret mode)")
    p.add_argument("--ops", default="causal_conv,selective_scan,linear_attention,delta_rule")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dims", default="768,1536")
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--n-state", type=int, default=16, help="selective-scan state size N")
    p.add_argument("--head-dim", type=int, default=64, help="attention ops: K = V per head")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device-kind", default=None, help="override the peak-table lookup key")
    p.add_argument("--peak-gbps", type=float, default=None)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--conv-block-t", type=int, default=None)
    p.add_argument("--conv-block-rows", type=int, default=None)
    p.add_argument("--conv-precision", default=None)
    p.add_argument("--scan-block-d", type=int, default=None)
    p.add_argument("--scan-chunk", type=int, default=None)
    p.add_argument("--attn-chunk", type=int, default=None, help="attention kernels' chunk")
    p.add_argument("--attn-block-v", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.dims, args.lengths = 2, "16", "64,128"
        args.dtypes, args.n_state, args.repeats, args.warmup = "float32", 4, 2, 1
        args.head_dim = 16
        args.conv_block_t = args.conv_block_t or 16
        args.conv_block_rows = args.conv_block_rows or 16
        args.scan_block_d = args.scan_block_d or 8
        args.scan_chunk = args.scan_chunk or 4
    return args


def main(argv=None):
    args = parse_args(argv)
    device = jax.devices()[0]
    kind = args.device_kind or device.device_kind
    bandwidth, flops = device_peaks(kind, args.peak_gbps, args.peak_tflops)
    interpret = jax.default_backend() == "cpu"
    conv_cfg = pk.CausalConvConfig(**{k: v for k, v in (
        ("block_t", args.conv_block_t), ("block_rows", args.conv_block_rows),
        ("precision", args.conv_precision)) if v is not None})
    scan_cfg = pk.SelectiveScanConfig(**{k: v for k, v in (
        ("block_d", args.scan_block_d), ("chunk", args.scan_chunk)) if v is not None})
    attn = {k: v for k, v in (("chunk", args.attn_chunk), ("block_v", args.attn_block_v))
            if v is not None}
    la_cfg, delta_cfg = pk.LinearAttentionConfig(**attn), pk.DeltaRuleConfig(**attn)
    print(f"device: {kind} ({jax.default_backend()}{', interpret mode' if interpret else ''}); "
          f"peaks: {bandwidth / 1e9:.0f} GB/s, "
          + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in flops.items()))
    cases = []
    for op in args.ops.split(","):
        for dtype in args.dtypes.split(","):
            for dim in map(int, args.dims.split(",")):
                for seq_len in map(int, args.lengths.split(",")):
                    if op == "causal_conv":
                        cases += conv_cases(args.batch, dim, seq_len, jnp.dtype(dtype),
                                            args.repeats, args.warmup, interpret, conv_cfg)
                    elif op == "selective_scan":
                        cases += scan_cases(args.batch, dim, seq_len, args.n_state,
                                            jnp.dtype(dtype), args.repeats, args.warmup,
                                            interpret, scan_cfg)
                    elif op == "linear_attention":
                        cases += linear_attention_cases(args.batch, dim, seq_len, args.head_dim,
                                                        jnp.dtype(dtype), args.repeats,
                                                        args.warmup, interpret, la_cfg)
                    elif op == "delta_rule":
                        cases += delta_rule_cases(args.batch, dim, seq_len, args.head_dim,
                                                  jnp.dtype(dtype), args.repeats, args.warmup,
                                                  interpret, delta_cfg)
                    else:
                        raise ValueError(f"unknown op {op!r}")
                    print(f"  done {op} {dtype} D={dim} L={seq_len}", flush=True)
    print()
    print_table(cases, bandwidth, flops)
    out = args.out or os.path.join(
        "benchmarks", "results", f"kernels-{kind.replace(' ', '_').replace('/', '_')}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump({"device_kind": kind, "backend": jax.default_backend(), "jax": jax.__version__,
                   "host": platform.node(), "peak_bytes_per_s": bandwidth, "peak_flops": flops,
                   "interpret": interpret, "conv_config": dataclasses.asdict(conv_cfg),
                   "scan_config": dataclasses.asdict(scan_cfg),
                   "linear_attention_config": dataclasses.asdict(la_cfg),
                   "delta_rule_config": dataclasses.asdict(delta_cfg), "repeats": args.repeats,
                   "cases": [dataclasses.asdict(c) for c in cases]}, f, indent=1, default=str)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

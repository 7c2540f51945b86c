"""Task generation speed: the vectorised `mad_jax.tasks.generate` against a per-instance loop.

For every task, its baseline setting and its longest setting (most tokens per sequence; for
memorization, whose grid only changes the vocabulary, the largest vocabulary), both splits:
instances/s of `generate` (numpy over whole chunks) and of a straightforward per-instance Python
generator written below, one sequence at a time as the PyTorch reference does (athms/mad-lab,
mad/data/instances.py: about 330 instances/s for in-context recall at seq_len 1024 and 500/s for
fuzzy recall at seq_len 128 on one core). The loops follow the same semantics as mad_jax.tasks, so
the two columns produce the same distribution of data. Everything runs on one core (numpy's
elementwise work is single-threaded). Rates are instances per CPU-second of this process, best of
interleaved repeats (robust on a shared machine); the wall-clock speedup is printed beside.

    python -m benchmarks.task_generation [--out benchmarks/results/task_generation.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from typing import Any, Callable

import numpy as np

from mad_jax import tasks

IGNORE = tasks.IGNORE_INDEX


# --- per-instance baselines: one sequence per call ---------------------------------------------

def loop_in_context_recall(rng, split, vocab_size, seq_len, noise_vocab_size, frac_noise):
    V = vocab_size - noise_vocab_size
    K = V // 2
    num_pairs = seq_len // 2 - 1
    keep = rng.integers(num_pairs)
    seq, tgt, binding = [], [], {}
    for i in range(num_pairs):
        if frac_noise > 0 and i != keep and rng.random() < frac_noise:
            seq += [int(rng.integers(V, vocab_size)), int(rng.integers(V, vocab_size))]
            tgt += [IGNORE, IGNORE]
            continue
        k = int(rng.integers(K))
        if k in binding:
            v = binding[k]
            tgt += [IGNORE, v]
        else:
            v = binding[k] = int(rng.integers(K, V))
            tgt += [IGNORE, IGNORE]
        seq += [k, v]
    k = int(rng.choice(sorted(binding)))
    seq += [k, binding[k]]
    tgt += [IGNORE, binding[k]]
    seq, tgt = np.array(seq, np.int32), np.array(tgt, np.int32)
    return seq[:-1], seq[1:] if split == "train" else tgt[1:]


def loop_fuzzy_in_context_recall(rng, split, vocab_size, seq_len, k_motif_size, v_motif_size):
    pad, K = vocab_size - 1, (vocab_size - 1) // 2
    train = split == "train"

    def key():
        size = int(rng.integers(1, k_motif_size + 1)) if train else k_motif_size
        return tuple(int(t) for t in rng.choice(K, size, replace=False))

    def value():
        size = int(rng.integers(1, v_motif_size + 1))
        return tuple(K + int(t) for t in rng.choice(vocab_size - 1 - K, size, replace=False))

    k_probe, v_probe = key(), value()
    probe_len = len(k_probe) + len(v_probe)
    body_end = seq_len - probe_len - k_motif_size - v_motif_size
    probe_at = int(rng.integers(0, seq_len - 2 * probe_len))
    seq, tgt, binding, seen, probe_added = [], [], {k_probe: v_probe}, set(), False
    while len(seq) < body_end:
        if not probe_added and len(seq) >= probe_at:
            k, probe_added = k_probe, True
        else:
            k = key()
            probe_added |= k == k_probe  # k* appeared: the probe is not inserted again
            if k not in binding:
                binding[k] = value()
        v = binding[k]
        seq += [*k, *v]
        tgt += [IGNORE] * len(k) + (list(v) if k in seen else [IGNORE] * len(v))
        seen.add(k)
    seq += [*k_probe, *v_probe]
    tgt += [IGNORE] * len(k_probe) + list(v_probe)
    seq = [pad] * (seq_len + 1 - len(seq)) + seq  # seq_len + 1 tokens: the model sees seq_len
    tgt = [IGNORE] * (seq_len + 1 - len(tgt)) + tgt
    seq, tgt = np.array(seq, np.int32), np.array(tgt, np.int32)
    return seq[:-1], seq[1:] if train else tgt[1:]


def loop_selective_copying(rng, split, vocab_size, seq_len, num_tokens_to_copy):
    n = num_tokens_to_copy
    blank, copy = vocab_size - 2, vocab_size - 1
    to_copy = rng.integers(0, vocab_size - 2, n)
    num_blanks = seq_len - 2 * n - 1
    gaps = rng.integers(0, n, num_blanks)
    seq = np.insert(to_copy, gaps, blank).tolist() + [copy] + [blank] * n
    tgt = [IGNORE] * (seq_len - n) + to_copy.tolist()
    return np.array(seq, np.int32), np.array(tgt, np.int32)


def loop_compression(rng, split, vocab_size, seq_len):
    seq = np.append(rng.integers(0, vocab_size - 1, seq_len - 1), vocab_size - 1).astype(np.int32)
    return seq, seq.copy()


def loop_memorization(rng, split, vocab_size, seq_len, value_of):
    seq, tgt = [], []
    for _ in range(seq_len // 2):
        k = int(rng.integers(len(value_of)))
        seq += [k, vocab_size - 1]
        tgt += [IGNORE, int(value_of[k])]
    return np.array(seq, np.int32), np.array(tgt, np.int32)


LOOPS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "in-context-recall": loop_in_context_recall,
    "noisy-in-context-recall": loop_in_context_recall,
    "fuzzy-in-context-recall": loop_fuzzy_in_context_recall,
    "selective-copying": loop_selective_copying,
    "compression": loop_compression,
    "memorization": loop_memorization,
}


def loop_generate(task: str, num_examples: int, seed: int, split: str, **params):
    """The per-instance baseline: `num_examples` calls of the task's loop, stacked."""
    p = tasks.resolve_params(task, params)
    if task == "memorization":
        from mad_jax.tasks.memorization import memorization_map
        p["value_of"] = memorization_map(p["vocab_size"], seed).tolist()
    rng = np.random.default_rng(seed)
    pairs = [LOOPS[task](rng, split, **p) for _ in range(num_examples)]
    return np.stack([x for x, _ in pairs]), np.stack([y for _, y in pairs])


# --- measurement -------------------------------------------------------------------------------

def benchmark_settings(task: str) -> list[tuple[str, dict[str, Any]]]:
    """(label, setting) for the task's baseline and its longest setting."""
    grid = tasks.settings(task)
    longest = max(grid, key=lambda s: (s["seq_len"], s["vocab_size"]))
    return [("baseline", grid[0]), (tasks.setting_name(task, longest), longest)]


def _rates(fn: Callable[[int, int], Any], num_examples: int, seed: int) -> dict[str, float]:
    """instances/s of one run of fn(num_examples, seed), by CPU time of this process and by wall
    clock (CPU time is the robust one on a shared machine: it does not count time spent
    descheduled; on an idle machine the two agree)."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn(num_examples, seed)
    return {"cpu": num_examples / (time.process_time() - cpu),
            "wall": num_examples / (time.perf_counter() - wall)}


def _loop_count(task, setting, split, seconds: float) -> int:
    """How many loop instances fit in about `seconds` (from a short probe run)."""
    start = time.perf_counter()
    loop_generate(task, 5, 0, split, **setting)
    per = (time.perf_counter() - start) / 5
    return max(5, int(seconds / per))


def run(num_examples: int, loop_seconds: float, repeats: int, task_names) -> list[dict[str, Any]]:
    """Vectorised and loop runs are interleaved, `repeats` of each; the best rate of each counts."""
    records = []
    for task in task_names:
        for label, setting in benchmark_settings(task):
            for split in ("train", "test"):
                tasks.generate(task, num_examples=1, seed=0, split=split, **setting)  # warm up
                n_loop = _loop_count(task, setting, split, loop_seconds / repeats)
                vec = {"cpu": 0.0, "wall": 0.0}
                loop = {"cpu": 0.0, "wall": 0.0}
                for r in range(repeats):
                    v = _rates(lambda n, s: tasks.generate(
                        task, num_examples=n, seed=s, split=split, **setting), num_examples, r)
                    lo = _rates(lambda n, s: loop_generate(task, n, s, split, **setting),
                                    n_loop, r)
                    vec = {k: max(vec[k], v[k]) for k in vec}
                    loop = {k: max(loop[k], lo[k]) for k in loop}
                records.append({
                    "task": task, "setting": label, "split": split, "seq_len": setting["seq_len"],
                    "vocab_size": setting["vocab_size"],
                    "vectorised_per_s": vec["cpu"], "loop_per_s": loop["cpu"],
                    "speedup": vec["cpu"] / loop["cpu"],
                    "vectorised_per_s_wall": vec["wall"], "loop_per_s_wall": loop["wall"],
                    "speedup_wall": vec["wall"] / loop["wall"],
                    "vectorised_examples": num_examples, "loop_examples": n_loop,
                })
                print(_row(records[-1]), flush=True)
    return records


_HEADER = (f"{'task':25s} {'setting':18s} {'split':5s} {'seq_len':>7s} {'loop/s':>9s} "
           f"{'vectorised/s':>13s} {'speedup':>8s} {'(wall)':>7s}")


def _row(r: dict[str, Any]) -> str:
    return (f"{r['task']:25s} {r['setting']:18s} {r['split']:5s} {r['seq_len']:7d} "
            f"{r['loop_per_s']:9.0f} {r['vectorised_per_s']:13.0f} {r['speedup']:7.0f}x "
            f"{r['speedup_wall']:6.0f}x")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/task_generation.json")
    parser.add_argument("--num-examples", type=int, default=12800,
                        help="examples per vectorised run (the grid's training-set size)")
    parser.add_argument("--loop-seconds", type=float, default=3.0,
                        help="about how long to run each per-instance loop, over all repeats")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved runs of each generator; the best rate counts")
    parser.add_argument("--tasks", default=",".join(tasks.TASKS))
    args = parser.parse_args(argv)

    print(_HEADER, flush=True)
    records = run(args.num_examples, args.loop_seconds, args.repeats, args.tasks.split(","))
    result = {
        "benchmark": "task_generation",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "numpy": np.__version__, "records": records,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

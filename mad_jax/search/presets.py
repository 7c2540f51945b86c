"""A search's settings (`SearchConfig`) and its presets, `cpu` and `full`.

cpu: about 30 minutes on 2 CPU cores (measured: 22 min with other jobs on the cores; a second
  run 5 s). Sequence mixers mh-attention, hyena and mamba with SwiGLU, 1 or 2 blocks at width 64,
  at most 130,000 parameters; population 4 over 2 generations: 12 genomes and the default hybrid
  (8 heads of width 8, as the registered 16 at width 128), 1-5 min each with its compile. The
  proxy: the in-context-recall baseline, one run of CPU_STEPS steps of batch 8 at lr 3e-3. NOT
  MAD scores. What it separates (measured, one seed): Hyena 0.69-0.79 and Hyena feeding
  attention 0.62-0.80 over fixed-state Mamba 0.41-0.49, while attention alone (0.31) and
  attention feeding Hyena (0.30) are still on the recall plateau attention leaves only after
  ~3,000 steps of batch 8 (protocol preset "quick"). So at this budget it does not rank attention
  above attention-free mixers; at the baseline setting no CPU budget does (both solve it at
  6,000 steps), the paper's gap comes from the larger-vocabulary settings. At 600 steps of batch
  16 (about 5 min per genome on 2 cores, past this preset's budget) attention fed by Mamba or
  Hyena reaches 0.99-1.00 on the baseline, and two Hyena blocks 0.99.
full: the MAD protocol (all six tasks, 66 settings x 6 runs, 200 epochs, width 128) for every
  genome, over ten mixer families and three channel mixers, 1 to 4 blocks; population 16 over
  8 generations. For accelerators.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mad_jax.protocol.validation import parse_grid
from mad_jax.search.errors import SearchError

DEFAULT_HYBRID = "hyena swiglu mh-attention swiglu"


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs (see `mad_jax.search.run`).

    Space: mixers, channels (comma-separated or tuples of registered layer names), min_blocks,
      max_blocks, choices ("layer.field=v1/v2,...": replaces those layers' SEARCH_SPACES entry).
    Budgets (0 or None: no limit): max_params, max_state (numbers per sequence at seq_len),
      max_flops (forward, per sequence of seq_len tokens); counted at vocab_size.
    Evaluation: tasks, protocol_preset, grid ("lr:wd,..." or pairs; None: the preset's), train
      (TrainConfig overrides), dim, norm, seed (data, init and the search's draws).
    Evolution: population, generations (after the first population), crossover_prob.
    parallel: genomes of a generation trained at once, each on its own local device: 1 (one
      after another), n, or "auto" (or 0: every local device, at most `population`). The same
      seed gives the same history and store whatever it is; not part of the search's identity.
    baseline: a hybrid string evaluated on the same proxy for comparison ("" for none).
    """
    mixers: tuple[str, ...] = ("mh-attention", "hyena", "mamba")
    channels: tuple[str, ...] = ("swiglu",)
    min_blocks: int = 1
    max_blocks: int = 2
    choices: str = ""
    max_params: int | None = None
    max_state: int | None = None
    max_flops: int | None = None
    seq_len: int = 128
    vocab_size: int = 16
    tasks: tuple[str, ...] = ("in-context-recall",)
    protocol_preset: str = "quick"
    grid: tuple[tuple[float, float], ...] | None = None
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dim: int = 128
    norm: str = "layernorm"
    seed: int = 0
    population: int = 6
    generations: int = 2
    crossover_prob: float = 0.5
    baseline: str = DEFAULT_HYBRID
    progress_every_s: float = 60.0
    parallel: int | str = 1

    def __post_init__(self):
        for field in ("population", "generations"):
            value = getattr(self, field)
            low = 2 if field == "population" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SearchError(f"{field} must be an integer >= {low}, got {value!r}")
        value = self.parallel
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int)
                                or value < 0):
            raise SearchError(f"parallel must be an integer >= 0 or 'auto', got {value!r}")
        if not 0 <= self.crossover_prob <= 1:
            raise SearchError(f"crossover_prob must be in [0, 1], got {self.crossover_prob!r}")


CPU_STEPS = 400
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "mixers": ("mh-attention", "hyena", "mamba"), "channels": ("swiglu",),
        "min_blocks": 1, "max_blocks": 2, "dim": 64,
        # Widths for 64: attention heads of width 16 or 8 (the registered 16 heads are of width 8
        # at 128), SwiGLU at its default (176) or 128 wide.
        "choices": "mh-attention.num_heads=4/8,hyena.filter_order=4/16,mamba.d_state=4/16,"
                   "swiglu.hidden_dim=none/128",
        "max_params": 130_000,
        "tasks": ("in-context-recall",), "protocol_preset": "quick", "grid": ((3e-3, 0.0),),
        "train": {"train_steps": CPU_STEPS, "batch_size": 8, "max_test_examples": 256,
                  "eval_every_steps": 200, "checkpoint_every_steps": 200,
                  "log_every_steps": 50},
        "population": 4, "generations": 2,
        "baseline": DEFAULT_HYBRID + " [mh-attention num_heads=8]",
    },
    "full": {
        "mixers": ("mh-attention", "sliding-attention", "mh-linear-attention",
                   "mh-gated-linear-attention", "hyena", "mh-hyena", "mamba", "mamba2",
                   "deltanet", "rg-lru"),
        "channels": ("swiglu", "mlp", "moe-mlp"), "min_blocks": 1, "max_blocks": 4,
        "tasks": ("in-context-recall", "fuzzy-in-context-recall", "noisy-in-context-recall",
                  "selective-copying", "compression", "memorization"),
        "protocol_preset": "full", "population": 16, "generations": 8,
    },
}


def resolve(preset: str | None = "cpu", **fields: Any) -> SearchConfig:
    """SearchConfig's defaults, then the preset's fields, then `fields` (None: not set)."""
    if preset is not None and preset not in PRESETS:
        raise SearchError(f"unknown search preset {preset!r}; valid presets: "
                          f"{', '.join(PRESETS)}")
    names = {f.name for f in dataclasses.fields(SearchConfig)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise SearchError(f"unknown search field(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(names))}")
    values = dict(PRESETS[preset]) if preset else {}
    values.update({k: v for k, v in fields.items() if v is not None})
    for field in ("mixers", "channels", "tasks"):
        if isinstance(values.get(field), str):
            values[field] = tuple(n.strip() for n in values[field].split(",") if n.strip())
    if isinstance(values.get("parallel"), str) and values["parallel"].strip().isdigit():
        values["parallel"] = int(values["parallel"])  # the config file's "4"
    if isinstance(values.get("grid"), str):
        values["grid"] = parse_grid(values["grid"])
    for field in ("max_params", "max_state", "max_flops"):
        if values.get(field) == 0:
            values[field] = None
        elif values.get(field) is not None:
            values[field] = int(values[field])
    return SearchConfig(**values)

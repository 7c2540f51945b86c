"""The training config, and the one function that turns `*_steps` / `*_epochs` / `*_examples`
into steps."""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping

# Budgets that can be given in steps, epochs or examples (exactly one of each family).
BUDGETS = ("train", "eval_every", "checkpoint_every")
_UNITS = ("steps", "epochs", "examples")
# Fields that do not change what a run computes: the devices, logging, checkpoint cadence, how the
# grid is laid out. A finished run, and a checkpoint, stays valid when they change (a checkpoint
# restores onto any mesh).
NOT_IDENTITY = ("mesh", "sharding_rules", "dcn_mesh", "log_every_steps", "tensorboard",
                "keep_checkpoints", "vmap", "checkpoint_every_steps", "checkpoint_every_epochs",
                "checkpoint_every_examples")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run (or one vmapped grid of runs) needs besides model and data.

    Defaults are the MAD protocol (DESIGN.md) as the reference trains it: AdamW (weight decay on
    every parameter), cosine decay to 1e-6 over 200 epochs stepped once per epoch, batch 128,
    evaluation every epoch, stop once the (macro) test accuracy reaches 0.999. One exception:
    precision defaults to float32, which every backend runs fast; the reference trains in bf16
    autocast, and the `full` protocol preset does too (`precision="bfloat16"`). These defaults
    are written here only: the presets (`mad_jax.protocol.presets`) list what differs from them,
    and the sweep configs' `train` groups are derived from these fields.
    """

    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    # ((lr, wd), ...): train these runs together (vmapped); overrides learning_rate/weight_decay.
    grid: tuple[tuple[float, float], ...] | None = None
    batch_size: int = 128
    eval_batch_size: int | None = None          # None: batch_size
    min_learning_rate: float = 1e-6
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    train_steps: int | None = None
    train_epochs: float | None = 200
    train_examples: int | None = None
    eval_every_steps: int | None = None
    eval_every_epochs: float | None = 1
    eval_every_examples: int | None = None
    checkpoint_every_steps: int | None = None
    checkpoint_every_epochs: float | None = 10
    checkpoint_every_examples: int | None = None
    log_every_steps: int = 50
    stop_accuracy: float | None = 0.999         # a run stops once its test accuracy reaches this
    seed: int = 0                               # model init and data order
    data_seed: int = 0                          # the task's data (tasks.load)
    max_train_examples: int | None = None       # cap on the task's training set (smoke preset)
    max_test_examples: int | None = None
    # Init seeds trained together with every (lr, wd) run (the seed axis; data and batch order
    # stay those of `seed`); None: just `seed`.
    seeds: tuple[int, ...] | None = None
    precision: str = "float32"                  # "float32" | "bfloat16" (bf16 compute, f32 params)
    schedule: str = "per-epoch"                 # "per-epoch" (the reference's staircase) | "per-step"
    select_on: str = "test"                     # early stopping and model selection: "test" (the
                                                # reference) | "validation" (a held-out split)
    vmap: bool = True                           # grid runs together (True) or one after another
    tensorboard: bool = True
    keep_checkpoints: bool = False              # delete a run's checkpoints once it has finished
    # Devices (mad_jax.sharding): "" trains on one device; "auto" spreads the grid's runs over all
    # devices ("sweep:gcd(runs, devices),data:-1"); or axis sizes, e.g. "sweep:2,data:4".
    mesh: str = ""
    sharding_rules: str = ""                    # logical-axis overrides, e.g. "embed:none"
    dcn_mesh: str = ""                          # axis sizes across TPU slices, e.g. "data:2"

    @classmethod
    def from_any(cls, config: "TrainConfig | Mapping[str, Any] | None" = None,
                 **overrides: Any) -> "TrainConfig":
        """Builds a TrainConfig from a mapping (dict, ConfigDict) over the defaults.

        Setting one member of a budget family (e.g. `train_steps`) clears the other members'
        defaults (`train_epochs`), so a budget is always given exactly one way.
        Raises ValueError naming unknown keys.
        """
        if isinstance(config, TrainConfig):
            base, given = dataclasses.asdict(config), {}
        else:
            base = {f.name: f.default for f in dataclasses.fields(cls)}
            given = dict(config.items()) if config is not None else {}
        given.update(overrides)
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - valid)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; valid keys: {sorted(valid)}")
        for family in BUDGETS:
            members = [f"{family}_{unit}" for unit in _UNITS]
            if any(given.get(m) is not None for m in members):
                for m in members:
                    base[m] = None
        base.update(given)
        if base["grid"] is not None:
            base["grid"] = tuple((float(lr), float(wd)) for lr, wd in base["grid"])
        if base["seeds"] is not None:
            base["seeds"] = tuple(int(s) for s in base["seeds"])
        return cls(**base)

    def __post_init__(self):
        self._check_ranges()
        for field, valid in (("precision", ("float32", "bfloat16")),
                             ("schedule", ("per-epoch", "per-step")),
                             ("select_on", ("test", "validation"))):
            if getattr(self, field) not in valid:
                raise ValueError(f"unknown {field} {getattr(self, field)!r}; valid: "
                                 f"{', '.join(valid)}")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds!r}")
        if not self.mesh and (self.dcn_mesh or self.sharding_rules):
            raise ValueError("dcn_mesh and sharding_rules need a mesh, e.g. mesh='auto' "
                             "(--config.mesh=auto)")

    def _check_ranges(self) -> None:
        """One-line ValueErrors for values no run can use (before anything trains)."""
        def bad(field, what):
            raise ValueError(f"{field} must be {what}, got {getattr(self, field)!r}")

        def number(value, integer=False):
            kind = numbers.Integral if integer else numbers.Real
            return (isinstance(value, kind) and not isinstance(value, bool)
                    and math.isfinite(value))

        for field in ("batch_size", "log_every_steps"):
            if not number(getattr(self, field), True) or getattr(self, field) < 1:
                bad(field, "a positive integer")
        for field in ("eval_batch_size", "max_train_examples", "max_test_examples",
                      *(f"{family}_{unit}" for family in BUDGETS for unit in ("steps",
                                                                              "examples"))):
            value = getattr(self, field)
            if value is not None and (not number(value, True) or value < 1):
                bad(field, "a positive integer (or unset)")
        for family in BUDGETS:
            value = getattr(self, f"{family}_epochs")
            if value is not None and (not number(value) or value <= 0):
                bad(f"{family}_epochs", "a positive number (or unset)")
        if not number(self.learning_rate) or self.learning_rate <= 0:
            bad("learning_rate", "a positive number")
        for field in ("weight_decay", "min_learning_rate"):
            if not number(getattr(self, field)) or getattr(self, field) < 0:
                bad(field, "a number >= 0")
        for field in ("b1", "b2"):
            if not number(getattr(self, field)) or not 0 <= getattr(self, field) < 1:
                bad(field, "in [0, 1)")
        if not number(self.eps) or self.eps <= 0:
            bad("eps", "a positive number")
        if self.stop_accuracy is not None and (not number(self.stop_accuracy)
                                               or not 0 <= self.stop_accuracy <= 1):
            bad("stop_accuracy", "in [0, 1] (or unset)")
        for field in ("seed", "data_seed"):
            if not number(getattr(self, field), True) or getattr(self, field) < 0:
                bad(field, "an integer >= 0")
        for lr, wd in self.grid or ():
            if not (number(lr) and lr > 0 and number(wd) and wd >= 0):
                raise ValueError(f"grid run (lr={lr}, wd={wd}): the learning rate must be > 0 "
                                 "and the weight decay >= 0")

    @property
    def runs(self) -> tuple[tuple[float, float], ...]:
        """The (learning rate, weight decay) of each run this config trains."""
        if self.grid is not None:
            return self.grid
        return ((float(self.learning_rate), float(self.weight_decay)),)

    @property
    def run_seeds(self) -> tuple[int, ...]:
        """The init seeds every (lr, wd) run is trained with."""
        return self.seeds if self.seeds is not None else (int(self.seed),)

    @property
    def seeded_runs(self) -> tuple[tuple[float, float, int], ...]:
        """(lr, wd, seed) of every run: `runs` x `run_seeds`, seeds innermost."""
        return tuple((lr, wd, s) for lr, wd in self.runs for s in self.run_seeds)


def to_steps(config: TrainConfig | Mapping[str, Any], budget: str, *,
             num_train_examples: int, batch_size: int) -> int | None:
    """Steps for `budget` ("train", "eval_every", "checkpoint_every") given in one unit.

    `<budget>_steps` is taken as is; `<budget>_epochs` is epochs * (num_train_examples //
    batch_size) (an epoch is what the data pipeline yields with drop_remainder: whole batches) and
    `<budget>_examples` is examples / batch_size; both rounded up, at least 1 step.
    Returns None if the budget is not set (e.g. no checkpoints); ValueError if set two ways.
    """
    get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
    given = {unit: get(f"{budget}_{unit}") for unit in _UNITS}
    given = {unit: v for unit, v in given.items() if v is not None}
    if not given:
        return None
    if len(given) > 1:
        raise ValueError(f"set only one of {', '.join(f'{budget}_{u}' for u in given)}")
    (unit, value), = given.items()
    if value < 0 or (unit != "steps" and value == 0):
        raise ValueError(f"{budget}_{unit} must be positive, got {value}")
    if unit == "steps":
        return int(value)
    if unit == "epochs":
        return max(1, math.ceil(value * max(1, num_train_examples // batch_size) - 1e-9))
    return max(1, math.ceil(value / batch_size - 1e-9))

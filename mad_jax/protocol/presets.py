"""Protocol presets: which settings run and with what training budget.

A preset's `train` lists only what differs from TrainConfig's defaults, which are the MAD protocol
(200 epochs, batch 128, the cosine stepped once per epoch, ...); `protocol.train_config` resolves
them to the values that run. `full` is the MAD protocol of the paper (DESIGN.md) as the reference
trains it: the defaults in bf16 autocast (`precision="bfloat16"`: bf16 compute, float32
parameters). `quick` and `smoke` shrink it so it runs on a CPU; their scores are written with their
preset name and are NOT MAD scores. They train in float32 (the default) with the cosine decayed
per step: their budgets are a few epochs or less, where a per-epoch staircase would hardly decay,
and bf16 brings no speed on a CPU (XLA:CPU computes it through float32).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    description: str
    settings: str | tuple[str, ...]  # "all": the 66-setting grid; "baseline": each task's
                                     # baseline; or setting names (tasks.setting_name)
    train: Mapping[str, Any]      # TrainConfig fields that differ from its defaults
    grid: tuple[tuple[float, float], ...] | None = None   # (lr, wd) runs; None: the protocol's 6

    @property
    def is_mad(self) -> bool:
        """Whether scores from this preset are MAD scores (only the full protocol's are)."""
        return self.name == "full"


PRESETS: dict[str, Preset] = {
    "full": Preset(
        name="full",
        description="the MAD protocol: 66 settings x 6 (lr, wd); AdamW, cosine to 1e-6, 200 "
                    "epochs, batch 128, 12,800 train / 1,280 test examples (varied by the grid)",
        settings="all",
        train={"precision": "bfloat16", "log_every_steps": 100},
    ),
    # quick: one run per setting. Attention needs ~3,000 steps at batch 8 to leave the plateau of
    # in-context recall (measured), which six runs per setting cannot afford on two CPU cores.
    "quick": Preset(
        name="quick",
        description="CPU in under an hour (45 min for the default hybrid on 2 cores): each "
                    "task's baseline x one run (lr 1e-3, wd 0); 6,000 steps of batch 8 on the "
                    "12,800 training examples, 512 test examples",
        settings="baseline",
        train={"train_steps": 6000, "batch_size": 8, "max_test_examples": 512,
               "eval_every_steps": 250, "checkpoint_every_steps": 500, "schedule": "per-step"},
        grid=((1e-3, 0.0),),
    ),
    "smoke": Preset(
        name="smoke",
        description="CI / laptop check in minutes: each task's baseline x 6 (lr, wd); 16 steps of "
                    "batch 8 on 256 examples, 64 test examples",
        settings="baseline",
        train={"train_steps": 16, "batch_size": 8, "max_train_examples": 256,
               "max_test_examples": 64, "eval_every_steps": 8, "checkpoint_every_steps": 8,
               "log_every_steps": 4, "schedule": "per-step"},
    ),
}


def get_preset(preset: str | Preset) -> Preset:
    """A Preset by name ("full", "quick", "smoke"), or `preset` itself; ValueError if unknown."""
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; valid presets: "
                         f"{', '.join(PRESETS)}") from None

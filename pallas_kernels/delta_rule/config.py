"""Block sizes and launch settings of the delta-rule kernel."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class DeltaRuleConfig:
    """Tiling of the chunked delta rule.

    chunk:     time steps per chunk C (a power of two; >= 16 on GPU hardware, where the chunk is a
               matmul dimension). Each chunk solves a [C, C] unit lower-triangular system by
               forward substitution (C row steps) and carries the [K, V] state.
    block_v:   value channels per program (a power of two); the grid is (B*H, V / block_v). Value
               columns of the state evolve independently, so each program recomputes the chunk's
               triangular solve for its own columns.
    precision: float32 dots: "default" (TF32 on GPU), "highest" (exact float32), "tf32", "tf32x3".
    num_warps, num_stages: Triton launch settings (GPU).
    target:    "gpu" | "tpu" | None (follow the default backend). Only the GPU (Triton) kernel
               exists; "tpu" raises UnsupportedShapeError so callers fall back.
    interpret: False, True (Pallas HLO interpreter).
    """

    chunk: int = 16
    block_v: int = 64
    precision: str = "default"
    num_warps: int = 4
    num_stages: int = 2
    target: str | None = None
    interpret: Any = False

    def __post_init__(self):
        for name in ("chunk", "block_v"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two, got {value}")

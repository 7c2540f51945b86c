"""Block sizes and launch settings of the linear-attention kernels."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class LinearAttentionConfig:
    """Tiling of the chunked linear-attention kernels.

    chunk:     time steps per chunk C (a power of two; >= 16 on GPU hardware, where the chunk is a
               matmul dimension). Inside a chunk the decayed scores are built row by row
               (C^2 K exponentials per chunk); across chunks the [K, V] state is carried. The
               forward pass used for gradients stores the state at every chunk start
               ([B*H, L/C, K, V] float32).
    block_v:   value channels per program (a power of two); the grid is (B*H, V / block_v).
    precision: float32 dots: "default" (TF32 on GPU), "highest" (exact float32), "tf32", "tf32x3".
    num_warps, num_warps_bwd, num_stages: Triton launch settings (GPU).
    target:    "gpu" | "tpu" | None (follow the default backend). Only the GPU (Triton) kernel
               exists; "tpu" raises UnsupportedShapeError so callers fall back.
    interpret: False, True (Pallas HLO interpreter).
    """

    chunk: int = 16
    block_v: int = 64
    precision: str = "default"
    num_warps: int = 4
    num_warps_bwd: int = 4
    num_stages: int = 2
    target: str | None = None
    interpret: Any = False

    def __post_init__(self):
        for name in ("chunk", "block_v"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two, got {value}")

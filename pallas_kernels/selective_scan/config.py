"""Block sizes and launch settings of the selective-scan kernels."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class SelectiveScanConfig:
    """Tiling of the selective scan.

    block_d:   channels per program (a power of two); the grid is (batch, D / block_d).
    chunk:     time steps unrolled per loop iteration. Loads of a chunk are issued together, and
               the backward pass keeps the chunk's states in registers; the forward pass used for
               gradients stores the state every `chunk` steps ([B, L/chunk, N, D] float32).
    num_warps, num_warps_bwd, num_stages: Triton launch settings (GPU).
    tpu_block_d, tpu_block_t, tpu_chunk: the TPU kernel's channel block (lanes; a multiple of 128
               on hardware), time steps per grid step (a multiple of 128 unless it covers all of L)
               and unrolled steps per group (8 = one sublane tile; also the checkpoint spacing).
    target:    "gpu" | "tpu" | None (follow the default backend).
    interpret: False, True (Pallas HLO interpreter) or `pltpu.InterpretParams()` (TPU interpreter).
    """

    block_d: int = 32
    chunk: int = 16
    num_warps: int = 4
    num_warps_bwd: int = 8
    num_stages: int = 2
    tpu_block_d: int = 256
    tpu_block_t: int = 256
    tpu_chunk: int = 8
    target: str | None = None
    interpret: Any = False

    def __post_init__(self):
        for name in ("block_d", "chunk", "tpu_block_d", "tpu_block_t", "tpu_chunk"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two, got {value}")
        if self.tpu_block_t % self.tpu_chunk:
            raise ValueError("tpu_block_t must be a multiple of tpu_chunk")

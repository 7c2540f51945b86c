"""Block sizes and launch settings of the causal-convolution kernels."""
from __future__ import annotations

import dataclasses
from typing import Any


# Per-target defaults of the block sizes: (block_t, block_rows, block_lags).
DEFAULTS = {"gpu": (64, 64, 64), "tpu": (128, 256, 32)}


@dataclasses.dataclass(frozen=True)
class CausalConvConfig:
    """Tiling of the blocked-Toeplitz causal convolution (None: the target's default, DEFAULTS).

    block_t:    time block T: the filter is cut into lag blocks of T taps, each applied as a
                [T, T] Toeplitz tile on the matrix units (a power of two, >= 16).
    block_rows: rows per output tile (a power of two, >= 16); a row is one (time block, batch)
                pair of one channel, so a tile covers block_rows / B time blocks of every batch row.
    block_lags: lag blocks per tile of the filter-gradient kernel (a power of two, >= 16).
    precision:  float32 dots: "default" (TF32 on GPU, the MXU default on TPU), "highest" (exact
                float32), and on GPU only "tf32", "tf32x3" (~float32 from three TF32 passes).
                bfloat16 inputs always use bfloat16 products with float32 accumulation.
    num_warps, num_stages: Triton launch settings (GPU).
    target:     "gpu" | "tpu" | None (follow the default backend). On TPU (not interpreted)
                block_t must be a multiple of 128 (one lane-dense tile per time block).
    interpret:  False, True (Pallas HLO interpreter) or `pltpu.InterpretParams()`.
    """

    block_t: int | None = None
    block_rows: int | None = None
    block_lags: int | None = None
    precision: str = "default"
    num_warps: int = 4
    num_stages: int = 2
    target: str | None = None
    interpret: Any = False

    def __post_init__(self):
        for name in ("block_t", "block_rows", "block_lags"):
            value = getattr(self, name)
            if value is not None and (value < 16 or value & (value - 1)):
                raise ValueError(f"{name} must be a power of two >= 16, got {value}")

    def for_target(self, target: str) -> "CausalConvConfig":
        """This config with unset block sizes filled in with `target`'s defaults."""
        block_t, block_rows, block_lags = DEFAULTS[target]
        return dataclasses.replace(self, block_t=self.block_t or block_t,
                                   block_rows=self.block_rows or block_rows,
                                   block_lags=self.block_lags or block_lags)

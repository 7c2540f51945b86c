"""Helpers shared by the kernels: errors, target selection, padding, dot precision."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import tpu as pltpu

TARGETS = ("gpu", "tpu")


class UnsupportedShapeError(ValueError):
    """A kernel cannot run these shapes/dtypes/backend; callers may fall back to XLA."""


def resolve_target(target: str | None, interpret) -> str:
    """The kernel family to run: "gpu" (Triton lowering) or "tpu" (Mosaic lowering).

    `target=None` follows the default backend; on CPU (interpret mode only) the GPU kernel is used
    unless the interpreter is the TPU one (`pltpu.InterpretParams`).
    """
    if target is not None:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS} or None, got {target!r}")
        return target
    backend = jax.default_backend()
    if backend in TARGETS:
        return backend
    if interpret is False or interpret is None:
        raise UnsupportedShapeError(
            f"no Pallas kernel for backend {backend!r}; pass interpret=True to run one on CPU")
    return "tpu" if _is_tpu_interpret(interpret) else "gpu"


def _is_tpu_interpret(interpret) -> bool:
    return isinstance(interpret, pltpu.InterpretParams)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_axis(a: jax.Array, axis: int, before: int, after: int) -> jax.Array:
    if before == 0 and after == 0:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (before, after)
    return jnp.pad(a, pad)


def check_float(name: str, a: jax.Array) -> None:
    if a.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise UnsupportedShapeError(
            f"{name}: dtype {a.dtype} not supported (float32 / bfloat16 / float16)")


_PRECISIONS = {
    "default": None,                                   # TF32 on GPU for float32 operands
    "tf32": lax.DotAlgorithmPreset.TF32_TF32_F32,
    "tf32x3": lax.DotAlgorithmPreset.TF32_TF32_F32_X3,  # ~float32 accuracy, 3 TF32 passes
    "highest": lax.Precision.HIGHEST,                  # IEEE float32 (no tensor cores)
}


def dot_precision(name: str, interpret) -> object:
    """The `precision=` for in-kernel float32 dots; interpret mode always uses exact float32."""
    if name not in _PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(_PRECISIONS)}, got {name!r}")
    if interpret is not False and interpret is not None:
        return lax.Precision.HIGHEST
    return _PRECISIONS[name]


MIN_DOT = 16  # Triton matmul dimensions are >= 16


class ChunkPlan(NamedTuple):
    """Geometry of a chunked [B, H, L, K] x [B, H, L, V] kernel: the sizes and their padded
    versions, and the value tile (hashable: a static argument of a custom VJP)."""
    seq_len: int
    dk: int
    dv: int
    seq_len_p: int
    dk_p: int
    dv_p: int
    block_v: int


def chunk_plan(config, q_shape, dv: int) -> ChunkPlan:
    """L padded to whole `config.chunk`s, K to a power of 2 (>= MIN_DOT), V to whole value tiles
    of at most `config.block_v`; UnsupportedShapeError for a chunk no GPU matmul can take."""
    _, _, seq_len, dk = q_shape
    if not config.interpret and config.chunk < MIN_DOT:
        raise UnsupportedShapeError(
            f"GPU kernel needs chunk >= {MIN_DOT} (a matmul dimension), got {config.chunk}")
    dk_p = max(next_power_of_2(dk), MIN_DOT)
    block_v = min(config.block_v, max(next_power_of_2(dv), MIN_DOT))
    return ChunkPlan(seq_len, dk, dv, round_up(seq_len, config.chunk), dk_p,
                     round_up(dv, block_v), block_v)

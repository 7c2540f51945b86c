"""Works around an XLA:CPU miscompile in jaxlib 0.10.2 and 0.11.x: the YNNPACK fusions.

Those jaxlib releases route some elementwise-multiply + reduce fusions of rank >= 7 arrays on the
CPU backend to YNNPACK, which then returns wrong values (up to 1e36, or NaN) or crashes the
process, depending on what was compiled before (jax-ml/jax#39257, #40412). mad_jax's own ops keep
their arrays below rank 7, but a user's model, or vmap over a grid of runs, can add ranks.

`disable_ynn_fusion()` appends `--xla_cpu_experimental_ynn_fusion_type=` (an empty list: no YNN
fusions) to XLA_FLAGS. XLA reads XLA_FLAGS once, when the first backend starts, so `import mad_jax`
does this before anything runs; after that it has no effect in this process. It is skipped when
XLA_FLAGS already names the flag (your choice wins), or when the installed jaxlib is not one known
to accept it (XLA aborts on an unknown flag). Only the CPU backend reads it.
"""
from __future__ import annotations

import importlib.metadata
import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# jaxlib releases whose XLA accepts the flag (0.10.1 .. 0.11.2 are known to).
_KNOWN_RANGE = ((0, 10, 1), (0, 12, 0))


def _jaxlib_version() -> tuple[int, ...] | None:
    try:
        text = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def disable_ynn_fusion(environ=os.environ) -> bool:
    """Adds the flag that turns off XLA:CPU's YNNPACK fusions; returns whether it was added."""
    flags = environ.get("XLA_FLAGS", "")
    version = _jaxlib_version()
    if YNN_FLAG in flags or version is None:
        return False
    low, high = _KNOWN_RANGE
    if not low <= version < high:
        return False
    environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=".strip()
    return True

"""XLA:CPU settings: the YNNPACK workaround, and how programs that run once are compiled.

Programs that run once per shape (a model's init, a grid state's create) compile with
`run_once_options`: on the CPU, without LLVM optimisation. Their compile is what costs there (the
default hybrid's init: 4.2 s at XLA's default, 1.8 s without; its run takes milliseconds either
way), and the train and eval programs, which run many times, keep XLA's default. Initial
parameters may then differ from a default-compiled init in the last bit (LLVM contracts
multiply-adds only when it optimises); the same seed still gives the same parameters.

The YNNPACK fusions: a miscompile in jaxlib 0.10.2 and 0.11.x.

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
# Per-program XLA options of a program that runs once, on the CPU backend.
RUN_ONCE_CPU_OPTIONS = {"xla_backend_optimization_level": 0}
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


def default_platform() -> str:
    """The platform ("cpu", "gpu", "tpu") that a program without placed inputs runs on: the
    default device's (`jax.default_device`, thread-local), else the default backend's."""
    import jax

    device = jax.config.jax_default_device
    if device is None:
        return jax.default_backend()
    return device if isinstance(device, str) else device.platform


def run_once_options(platform: str) -> dict | None:
    """`compiler_options` for `jax.jit` of a program that runs once per shape on `platform`:
    no LLVM optimisation on the CPU (it compiles about 2.3x faster); None (XLA's default)
    elsewhere."""
    return dict(RUN_ONCE_CPU_OPTIONS) if platform == "cpu" else None

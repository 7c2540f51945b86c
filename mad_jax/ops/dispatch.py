"""Choosing between a Pallas kernel and the pure-jnp reference for each core op.

`impl` is one of "auto" | "xla" | "pallas":
  * "xla":    the pure-jnp reference (runs everywhere);
  * "pallas": the Pallas kernel (raises if the kernel cannot run the given shapes);
  * "auto":   the process-wide setting (`set_kernel_impl` / `kernel_impl`), and if that is "auto"
              too, the kernel on the backends listed for the op in AUTO_KERNEL_BACKENDS and the
              reference elsewhere (and wherever the kernel rejects the shapes with
              `pallas_kernels.UnsupportedShapeError`).

The TPU (Mosaic) kernels are verified in the TPU interpreter only, so "auto" keeps the reference on
TPU until a native run of `pytest -m tpu_only tests/test_pallas_native.py` confirms them; force them
with impl="pallas" (or `set_kernel_impl("pallas")`).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import jax

IMPLS = ("auto", "xla", "pallas")
# Backends on which impl="auto" runs each op's Pallas kernel.
AUTO_KERNEL_BACKENDS = {
    "causal_conv": ("gpu",),
    "selective_scan": ("gpu",),
    "linear_attention": (),
    "delta_rule": (),
}

_state = threading.local()
_global_impl = "auto"


def check_impl(impl: str) -> str:
    """Returns `impl` if it is a valid choice; raises a one-line ValueError otherwise."""
    if impl not in IMPLS:
        raise ValueError(f"kernel impl must be one of {IMPLS}, got {impl!r}")
    return impl


def set_kernel_impl(impl: str) -> None:
    """Sets the process-wide default used where an op is called with impl="auto"."""
    global _global_impl
    _global_impl = check_impl(impl)


def get_kernel_impl() -> str:
    """The default in effect here: the innermost `kernel_impl` context, else the global setting."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else _global_impl


@contextlib.contextmanager
def kernel_impl(impl: str) -> Iterator[None]:
    """Context manager overriding the default impl (thread-local) for the ops traced inside it."""
    check_impl(impl)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(impl)
    try:
        yield
    finally:
        stack.pop()


def resolve_impl(impl: str, op: str) -> tuple[str, bool]:
    """Maps a requested impl for `op` to ("xla" | "pallas", forced).

    `forced` is True when the user asked for the kernel explicitly (the call must fail rather than
    fall back); False when "auto" chose it from the backend.
    """
    check_impl(impl)
    if impl == "auto":
        impl = get_kernel_impl()
    if impl != "auto":
        return impl, True
    return ("pallas" if jax.default_backend() in AUTO_KERNEL_BACKENDS[op] else "xla"), False

"""Parameter checks shared by the tasks: each failure is a ValueError naming the parameter and
the valid range."""
from __future__ import annotations

import numbers
from typing import Any


def as_int(name: str, value: Any) -> int:
    """`value` as a Python int; ValueError if it is not integral (bools are rejected too)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():  # e.g. 128.0 from a config
        return int(value)
    raise ValueError(f"{name} must be an integer, got {value!r}")


def as_float(name: str, value: Any) -> float:
    """`value` as a Python float; ValueError if it is not a real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def at_least(name: str, value: int, minimum: int, task: str, why: str = "") -> None:
    if value < minimum:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{task}: {name} must be >= {minimum}{reason}, got {value}")


def even(name: str, value: int, task: str) -> None:
    if value % 2:
        raise ValueError(
            f"{task}: {name} must be even (a sequence is {name}/2 two-token items), got {value}")


def fraction(name: str, value: float, task: str) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{task}: {name} must be in [0, 1), got {value}")


def non_negative_int(name: str, value: Any) -> int:
    value = as_int(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value

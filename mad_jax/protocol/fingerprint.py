"""The identity of a run: everything that changes what it computes, and its fingerprint.

A run's identity is a JSON tree:

    {"model": describe(model), "task": ..., "setting": {...}, "train": {...},
     "learning_rate": ..., "weight_decay": ..., "seed": ..., "versions": {...}}

`describe(model)` walks the built module: its class, every field of it and of every sub-module and
layer config (a mad_jax model holds its whole architecture in its fields). A module class defined
outside mad_jax and flax (a user's own model) is described by its fields and a hash of its source
code, so fixing a `model_fn`'s module under the same architecture name changes the identity.
`versions` carries the code version of the metric and of the task data (`METRIC_VERSION`,
`tasks.cache.FORMAT_VERSION`): results computed before either changed are not reused.

The fingerprint is the first 16 hex digits of the sha256 of the canonical JSON; the results table
stores it in every row, and each setting's `result.json` keeps the identity itself, so a change is
named by the path of the field that changed (`first_differences`).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
from typing import Any, Mapping

import numpy as np

# Bump when the metric that fills final_test_acc changes meaning (2: macro accuracy, the
# reference's metric; 1 was micro accuracy).
METRIC_VERSION = 2
_OWN_PACKAGES = ("mad_jax", "flax", "jax", "optax", "numpy", "builtins", "functools")


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _is_own(cls) -> bool:
    return (getattr(cls, "__module__", "") or "").split(".")[0] in _OWN_PACKAGES


@functools.lru_cache(maxsize=None)
def _source_hash(cls) -> str | None:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _describe_class(cls) -> Any:
    if _is_own(cls):
        return _qualname(cls)
    return {"class": _qualname(cls), "source": _source_hash(cls)}


def _resolved_layers(module) -> list | None:
    """For a mad_jax backbone: every layer as it was resolved when the model was built (class and
    all fields), so a model over a name registered to another module has another identity."""
    resolved, overrides = getattr(module, "resolved_layers", None), getattr(module, "layer_overrides", ())
    if not (isinstance(resolved, tuple) and resolved and isinstance(overrides, tuple)):
        return None
    configs = {name: dict(items) for name, items in overrides}
    try:
        return [describe(cls(**{**dict(defaults), **configs.get(name, {})}))
                for name, cls, defaults in resolved]
    except (ValueError, TypeError):
        return None


def describe(obj: Any) -> Any:
    """A JSON tree that is equal for two objects exactly when they configure the same
    computation: modules and dataclasses by class and fields, callables by qualified name,
    arrays by shape, dtype and a hash of their values."""
    import flax.linen as nn

    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return describe(obj.item())
    if isinstance(obj, nn.Module) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        fields = {f.name: describe(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                  if f.name not in ("parent", "name", "resolved_layers")}
        resolved = _resolved_layers(obj)
        if resolved is not None:
            fields["resolved_layers"] = resolved
        return {"module": _describe_class(type(obj)), **fields}
    if isinstance(obj, Mapping):
        return {str(k): describe(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((describe(v) for v in obj), key=repr)
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # numpy and jax arrays
        array = np.asarray(obj)
        return {"array": list(array.shape), "dtype": str(array.dtype),
                "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]}
    if isinstance(obj, np.dtype) or (isinstance(obj, type) and issubclass(obj, np.generic)):
        return str(np.dtype(obj))
    if isinstance(obj, functools.partial):
        return {"partial": describe(obj.func), "args": describe(obj.args),
                "keywords": describe(obj.keywords)}
    if isinstance(obj, type):
        return _describe_class(obj)
    if callable(obj) and hasattr(obj, "__qualname__"):
        if _is_own(obj):
            return _qualname(obj)
        return {"function": _qualname(obj), "source": _source_hash(obj)}
    text = repr(obj)
    if " at 0x" in text:  # a repr that names a memory address: describe by type only
        return _describe_class(type(obj))
    return {"object": _describe_class(type(obj)), "repr": text}


def canonical(identity: Any) -> str:
    return json.dumps(identity, sort_keys=True, separators=(",", ":"))


def fingerprint(identity: Any) -> str:
    """First 16 hex digits of the sha256 of the identity's canonical JSON."""
    return hashlib.sha256(canonical(identity).encode()).hexdigest()[:16]


def versions() -> dict:
    """Code versions that change what a finished run's numbers mean."""
    from mad_jax.tasks import cache

    return {"metric": METRIC_VERSION, "task_data": cache.FORMAT_VERSION}


def first_differences(old: Any, new: Any, path: str = "", limit: int = 3) -> list[str]:
    """'path: old -> new' for the first `limit` leaves where two identities differ."""
    out: list[str] = []

    def walk(a, b, p):
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{p}.{k}" if p else str(k))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{p}[{i}]")
        elif (isinstance(a, list) and isinstance(b, list)
              and any(isinstance(v, (dict, list)) for v in a + b)):
            out.append(f"{p}: {len(a)} items -> {len(b)} items")
        elif a != b:
            out.append(f"{p or 'identity'}: {_short(a)} -> {_short(b)}")

    walk(old, new, path)
    return out


def _short(value: Any, width: int = 60) -> str:
    text = canonical(value) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."

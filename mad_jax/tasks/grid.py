"""The MAD difficulty grid: per task a baseline setting and the one-at-a-time changes to it
(DESIGN.md; the reference's configs/tasks/*.yml). 66 settings in all."""
from __future__ import annotations

from typing import Any, Mapping

from mad_jax.tasks.registry import get_task, resolve_params

NUM_TEST_EXAMPLES = 1280

_RECALL_CHANGES = {
    "vocab_size": (32, 64, 128),
    "seq_len": (256, 512, 1024),
    "num_train_examples": (6400, 3200, 1600, 800),
}
# task -> (baseline overrides of the task defaults, changes in grid order)
_GRID: dict[str, tuple[dict[str, Any], dict[str, tuple]]] = {
    "in-context-recall": ({"num_train_examples": 12800}, _RECALL_CHANGES),
    "noisy-in-context-recall": ({"num_train_examples": 12800}, {
        "vocab_size": (48, 80, 144),  # 16 of them noise
        "seq_len": (256, 512, 1024),
        "num_train_examples": (6400, 3200, 1600, 800),
        "frac_noise": (0.4, 0.6, 0.8),
    }),
    "fuzzy-in-context-recall": ({"num_train_examples": 12800}, _RECALL_CHANGES),
    "selective-copying": ({"num_train_examples": 12800}, {
        "vocab_size": (32, 64, 128),
        "seq_len": (512, 1024),
        "num_train_examples": (6400, 3200, 1600, 800),
        "num_tokens_to_copy": (32, 64, 96),
    }),
    "compression": ({"num_train_examples": 12800}, {
        "vocab_size": (32, 64, 128),
        "seq_len": (64, 128, 256),
        "num_train_examples": (6400, 3200, 1600, 800),
    }),
    "memorization": ({"num_train_examples": 256}, {
        "vocab_size": (512, 1024, 2048, 4096, 8192),
    }),
}


def baseline(task: str) -> dict[str, Any]:
    """The task's baseline setting: every generation parameter plus the data-set sizes."""
    overrides, _ = _GRID[get_task(task).name]
    setting = dict(get_task(task).defaults)
    setting.update(overrides)
    setting["num_test_examples"] = NUM_TEST_EXAMPLES
    return setting


def settings(task: str) -> list[dict[str, Any]]:
    """The difficulty grid of `task`: the baseline first, then one change at a time, in grid order.

    Each setting holds every generation parameter of the task explicitly, plus num_train_examples
    and num_test_examples (the validation split takes num_test_examples unless a setting adds
    num_validation_examples). Fresh dicts: callers may modify them.
    """
    base = baseline(task)
    out = [base]
    for key, values in _GRID[task][1].items():
        for value in values:
            out.append({**base, key: value})
    for setting in out:
        resolve_params(task, setting)  # every grid point must be valid
    return out


# Optional setting keys that do not change which grid setting it is.
_NOT_A_DIFFICULTY = ("num_validation_examples",)


def _differences(task: str, setting: Mapping[str, Any]) -> list[tuple[str, Any]]:
    base = baseline(task)
    unknown = sorted(k for k in setting if k not in base and k not in _NOT_A_DIFFICULTY)
    if unknown:
        raise ValueError(
            f"unknown setting key(s) {unknown} for task {task!r}; valid: {sorted(base)}")
    return [(k, setting[k]) for k in base if k in setting and setting[k] != base[k]]


def setting_name(task: str, setting: Mapping[str, Any]) -> str:
    """"baseline", or "key=value" for the key(s) that differ from the baseline (comma-joined)."""
    diffs = _differences(task, setting)
    if not diffs:
        return "baseline"
    return ",".join(f"{k}={v}" for k, v in diffs)


def difficulty_variable(task: str, setting: Mapping[str, Any]) -> tuple[str | None, Any]:
    """(key, value) of the one key that differs from the baseline, (None, None) for the baseline.
    ValueError if more than one key differs (not a grid setting)."""
    diffs = _differences(task, setting)
    if not diffs:
        return None, None
    if len(diffs) > 1:
        raise ValueError(f"setting differs from the {task} baseline in more than one key: {diffs}")
    return diffs[0]

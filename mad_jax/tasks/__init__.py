"""The six MAD synthetic tasks, their difficulty grid, and the grain data pipeline.

    inputs, targets = generate("in-context-recall", num_examples=128, seed=0, split="train")
    for setting in settings("in-context-recall"): ...
    train = load(task, setting, "train", seed=0, cache_dir="/tmp/mad-data")
    for batch in batches(*train, batch_size=128, seed=0, num_epochs=200): ...
"""
# Task families register themselves in the registry on import.
from mad_jax.tasks import compression as _compression  # noqa: F401
from mad_jax.tasks import copying as _copying  # noqa: F401
from mad_jax.tasks import fuzzy_recall as _fuzzy_recall  # noqa: F401
from mad_jax.tasks import memorization as _memorization  # noqa: F401
from mad_jax.tasks import recall as _recall  # noqa: F401
from mad_jax.tasks.cache import load
from mad_jax.tasks.text import decode
from mad_jax.tasks.generation import generate
from mad_jax.tasks.grid import difficulty_variable, setting_name, settings
from mad_jax.tasks.pipeline import batches
from mad_jax.tasks.registry import IGNORE_INDEX, TASKS, get_task, resolve_params

TASK_BACKBONE = {task: get_task(task).backbone for task in TASKS}

__all__ = [
    "IGNORE_INDEX", "TASKS", "TASK_BACKBONE", "batches", "decode", "difficulty_variable",
    "generate", "load", "resolve_params", "setting_name", "settings",
]

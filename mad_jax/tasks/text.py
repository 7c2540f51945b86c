"""`decode`: one sequence (inputs or targets) as a readable string, for notebooks and debugging."""
from __future__ import annotations

from typing import Any

import numpy as np

from mad_jax.tasks.registry import IGNORE_INDEX, get_task, resolve_params


def decode(task: str, tokens: Any, vocab_size: int, **params: Any) -> str:
    """Space-separated labels of a 1-D token sequence of `task`.

    Labels: recall and memorization keys "k3", values "v9", noise "n20"; fuzzy recall pad "_";
    selective copying tokens "5", blank "_", copy "<copy>"; compression "<compress>";
    memorization insert "<ins>"; an unscored target (-100) is ".".
    params: other generation parameters that change the vocabulary layout
      (noise_vocab_size for the noisy task; baseline values otherwise).
    """
    spec = get_task(task)
    p = resolve_params(task, {**params, "vocab_size": vocab_size})
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"decode expects one sequence (1-D), got shape {tokens.shape}")
    labels = []
    for token in tokens.tolist():
        if token == IGNORE_INDEX:
            labels.append(".")
        elif not 0 <= token < vocab_size:
            raise ValueError(f"token {token} outside [0, vocab_size={vocab_size})")
        else:
            labels.append(spec.token_label(token, p))
    return " ".join(labels)

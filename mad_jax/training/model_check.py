"""Checks that a model can train on a task's data before any step runs: it is a flax Module, it
initialises on the inputs (a mad_jax backbone's failing layer is named), and it scores every token
of the vocabulary (a model with too few output classes would give NaN losses, not an error)."""
from __future__ import annotations

from typing import Any

import numpy as np


class ModelError(ValueError):
    """A model that cannot train on the task's data; the message names the fix."""


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if not isinstance(e, ValueError) else text


def _failing_layer(model, length: int):
    """(block index, layer name, error) of the first layer of a mad_jax backbone that cannot
    be initialised at the model's width, or None."""
    import jax
    import jax.numpy as jnp

    resolved, overrides = getattr(model, "resolved_layers", None), getattr(model, "layer_overrides", ())
    dim = getattr(model, "dim", None)
    if not (isinstance(resolved, tuple) and isinstance(dim, int)):
        return None
    configs = {name: dict(items) for name, items in overrides}
    x_1xLxD = jax.ShapeDtypeStruct((1, length, dim), jnp.float32)
    for i, (name, cls, defaults) in enumerate(resolved):
        try:
            own = configs.get(name, {})
            config = {**dict(defaults), **own}
            if "max_length" in getattr(cls, "__dataclass_fields__", {}) and "max_length" not in own:
                config["max_length"] = getattr(model, "max_length", length)
            jax.eval_shape(cls(**config).init, jax.random.key(0), x_1xLxD)
        except Exception as e:  # noqa: BLE001 - any failure names the layer
            return i, name, e
    return None


def check_model(model: Any, *, arch: str, task: str, vocab_size: int, inputs: np.ndarray) -> None:
    """The model a model_fn built for one task setting: a flax Module that initialises on the
    task's inputs and scores every token of its vocabulary. ModelError otherwise."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    if not isinstance(model, nn.Module):
        raise ModelError(f"architecture {arch!r}: model_fn returned {type(model).__name__} for "
                            f"{task}; it must return a flax.linen Module")
    x_1xL = jnp.asarray(inputs[:1])
    try:
        logits = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x_1xL), x_1xL,
                                                    mutable=["losses"])[0])
    except Exception as e:  # noqa: BLE001 - any failure is the architecture's
        failing = _failing_layer(model, x_1xL.shape[1])
        if failing is not None:
            i, name, error = failing
            reason = _first_line(error)
            fix = ("" if ";" in reason else  # the layer's own message already names the fix
                   f"; choose a dim it accepts or change its config "
                   f"(layer_configs={{{name!r}: {{...}}}})")
            raise ModelError(f"architecture {arch!r}: layer {name!r} (block {i}) does not build "
                             f"at dim={model.dim}: {reason}{fix}") from None
        raise ModelError(f"architecture {arch!r} does not build for {task}: "
                            f"{_first_line(e)}") from None
    classes = getattr(logits, "shape", (None,))[-1]
    if classes is None or classes < vocab_size:
        raise ModelError(
            f"architecture {arch!r}: the model for {task} scores {classes} token classes but the "
            f"task's vocabulary has {vocab_size}; build it with the vocab_size model_fn receives")

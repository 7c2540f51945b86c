"""Striped hybrids: a list of layer names, or a compact string such as "(hyena swiglu)x2 mh-attention swiglu"."""
from __future__ import annotations

import re
from typing import Sequence

from mad_jax.layers import registry

_TOKEN_RE = re.compile(r"\s*(\(|\)(?:x(\d+))?|[^\s()]+)")


def _parse(text: str) -> list[str]:
    """Parses the compact form: names separated by spaces, `(...)xN` groups, `namexN` repeats."""
    stack: list[list[str]] = [[]]
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"cannot parse layer string {text!r} at position {pos}")
        token, repeat = match.group(1), match.group(2)
        pos = match.end()
        if token == "(":
            stack.append([])
        elif token.startswith(")"):
            if len(stack) == 1:
                raise ValueError(f"unbalanced ')' in layer string {text!r}")
            if repeat is None and re.match(r"x(?![^\s()])|x\D", text[pos:]):
                raise ValueError(f"')x' needs a repeat count in layer string {text!r}, "
                                 "e.g. '(hyena swiglu)x2'")
            group = stack.pop()
            stack[-1].extend(group * int(repeat or 1))
        else:
            name_repeat = re.fullmatch(r"(.+?)x(\d+)", token)
            if name_repeat and name_repeat.group(1) in registry.LAYERS:
                stack[-1].extend([name_repeat.group(1)] * int(name_repeat.group(2)))
            else:
                stack[-1].append(token)
    if len(stack) != 1:
        raise ValueError(f"unbalanced '(' in layer string {text!r}")
    return stack[0]


def parse_layers(layers: str | Sequence[str]) -> tuple[str, ...]:
    """Returns the hybrid as a tuple of registered layer names.

    Accepts a sequence of names or the compact string form: names separated by spaces, a group
    repeated with `(...)xN`, one name repeated with `namexN`, e.g. "(hyena swiglu)x2 mh-attention swiglu".
    Raises ValueError naming any unknown layer and listing the valid ones.
    """
    names = _parse(layers) if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError("a model needs at least one layer; got an empty layer list")
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"layer names must be strings, got {name!r}")
        registry.get_layer_spec(name)  # raises a ValueError with the valid names
    return tuple(names)


def format_layers(layers: Sequence[str]) -> str:
    """The inverse of `parse_layers` for display: names joined by spaces."""
    return " ".join(layers)

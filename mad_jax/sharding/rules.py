"""The rules table: logical axis names (on parameters and activations) -> mesh axes.

Layers name the axes of every parameter with a small vocabulary (`LOGICAL_AXES`); the table below
says which mesh axes shard each name. Rules are read in order and a mesh axis is used at most once
per array, so activations [batch, length, embed] shard batch over (data, fsdp) and leave embed
whole, while parameters [embed, mlp] shard embed over fsdp (FSDP / ZeRO-3) and mlp over tensor
(Megatron tensor parallel).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from flax import linen as nn
from jax.sharding import Mesh, PartitionSpec as P

from mad_jax.sharding.mesh import MESH_AXES

LOGICAL_AXES = ("sweep", "batch", "length", "embed", "mlp", "heads", "kv", "vocab", "layers")

Rules = tuple[tuple[str, Any], ...]

DEFAULT_RULES: Rules = (
    ("sweep", "sweep"),              # independent runs of the hyperparameter grid
    ("batch", ("data", "fsdp")),     # examples: data parallel over both data axes
    ("embed", "fsdp"),               # model width of parameters: FSDP
    ("mlp", "tensor"),               # inner widths: tensor parallel
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),                    # per-head width, sequence and stacked layers stay whole
    ("length", None),
    ("layers", None),
)


def make_rules(overrides: Mapping[str, Any] | Sequence[tuple[str, Any]] | str | None = None
               ) -> Rules:
    """The default table with some logical names remapped.

    `overrides` maps a logical name to a mesh axis, a tuple of mesh axes, or None (replicate); as a
    dict, a list of pairs, or a config string "embed:none,mlp:tensor,batch:data+fsdp". Remapped
    names keep their place in the table; new names are appended.
    """
    if overrides is None or overrides == "":
        return DEFAULT_RULES
    if isinstance(overrides, str):
        pairs = []
        for item in overrides.replace(" ", "").split(","):
            name, sep, value = item.partition(":")
            if not sep:
                raise ValueError(f"rule {item!r} must be 'logical:mesh', e.g. 'embed:none'")
            axes = tuple(a for a in value.split("+") if a.lower() not in ("", "none"))
            pairs.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
        overrides = pairs
    updates = {name: tuple(axes) if isinstance(axes, list) else axes for name, axes in
               (overrides.items() if isinstance(overrides, Mapping) else overrides)}
    for name, axes in updates.items():
        for axis in (axes if isinstance(axes, (tuple, list)) else (axes,)):
            if axis is not None and axis not in MESH_AXES:
                raise ValueError(f"rule {name!r} -> {axes!r}: unknown mesh axis {axis!r}; "
                                 f"valid axes: {', '.join(MESH_AXES)}")
    rules = [(name, updates.pop(name) if name in updates else axes) for name, axes in DEFAULT_RULES]
    rules += list(updates.items())
    return tuple(rules)


def _axes_tuple(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def mesh_spec(logical: P | Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
              rules: Rules = DEFAULT_RULES) -> P:
    """Mesh PartitionSpec for one array from its logical axis names and its shape.

    A dimension that the mapped mesh axes do not divide evenly keeps the longest prefix of those
    axes that does (often none: replicated), because jit in/out shardings must divide evenly.
    Small models on big meshes (a 16-token vocab on tensor:32) thus still run, just less sharded.
    """
    if logical is None:
        return P()
    names = tuple(logical)
    if len(names) > len(shape):
        raise ValueError(f"logical axes {names} name more dimensions than the shape {tuple(shape)}")
    mapped = nn.logical_to_mesh_axes(names, rules)
    out = []
    for dim, entry in zip(shape, mapped):
        axes = _axes_tuple(entry)
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes = axes[:-1]
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    while out and out[-1] is None:
        out.pop()
    return P(*out)

"""The search space: which layers fill the blocks, how many blocks, and the config values the
search may give each layer.

Config choices are data, one entry per layer name in `SEARCH_SPACES` (the built-in families
below), extended with `register_search_space` for any registered layer, a user's own included.
Every choice must be a field of the layer's module; values are JSON scalars. Widths that are
absolute (`hidden_dim`) are written for the MAD width 128; a value a model of another width
cannot build is rejected by the constraint check, never trained.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from mad_jax.layers import LAYERS
from mad_jax.search.errors import SearchError
from mad_jax.search.genome import Genome, parse_scalar

Choices = tuple[tuple[str, tuple[Any, ...]], ...]   # ((field, (value, ...)), ...), sorted
_SCALARS = (bool, int, float, str, type(None))
_NOT_CHOICES = ("parent", "name", "dtype", "param_dtype")

# layer name -> {field: values}. Heads, state sizes, expansions, filter orders, windows: the
# knobs that trade quality against parameters and inference state.
SEARCH_SPACES: dict[str, Choices] = {}


def register_search_space(layer: str, choices: Mapping[str, Sequence[Any]], *,
                          overwrite: bool = False) -> None:
    """Declares the config values the search may give `layer` (a registered layer name).

    choices: {field of the layer's module: values}, e.g. {"num_heads": (4, 8, 16)}.
    Raises SearchError (one line) for an unknown layer, a field the module lacks, an empty or
    non-scalar list of values, or a name already declared (overwrite=True replaces it).
    """
    if layer in SEARCH_SPACES and not overwrite:
        raise SearchError(f"layer {layer!r} already has a search space; pass overwrite=True to "
                          "replace it")
    SEARCH_SPACES[layer] = check_choices(layer, choices)


def check_choices(layer: str, choices: Mapping[str, Sequence[Any]]) -> Choices:
    """`choices` validated against the layer's module, in canonical (sorted) form."""
    if layer not in LAYERS:
        raise SearchError(f"unknown layer {layer!r} in the search space; valid layers: "
                          f"{', '.join(sorted(LAYERS))} (or register your own with "
                          "mad_jax.layers.register_layer)")
    module = LAYERS[layer].module
    fields = [f for f in module.__dataclass_fields__ if f not in _NOT_CHOICES]
    out = []
    for field, values in sorted(dict(choices).items()):
        if field not in fields:
            raise SearchError(f"search space of {layer!r}: {field!r} is not a field of "
                              f"{module.__name__}; fields: {', '.join(fields)}")
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        if not values or not all(isinstance(v, _SCALARS) for v in values):
            raise SearchError(f"search space of {layer!r}: {field!r} needs a non-empty list of "
                              f"numbers, strings or booleans, got {values!r}")
        out.append((field, tuple(dict.fromkeys(values))))
    return tuple(out)


for _layer, _choices in {
        "mh-attention": {"num_heads": (4, 8, 16)},
        "sliding-attention": {"window": (16, 32, 64)},
        "mh-sliding-attention": {"num_heads": (8, 16), "window": (16, 32, 64)},
        "mh-linear-attention": {"num_heads": (4, 8, 16)},
        "mh-gated-linear-attention": {"num_heads": (4, 8, 16)},
        "hyena": {"filter_order": (4, 16, 64), "order": (2, 3)},
        "mh-hyena": {"num_heads": (8, 16), "filter_order": (2, 4, 16)},
        "mamba": {"d_state": (4, 8, 16), "expand": (1, 2)},
        "mamba2": {"d_state": (4, 8, 16), "expand": (1, 2)},
        "deltanet": {"num_heads": (4, 8)},
        "gated-deltanet": {"num_heads": (4, 8)},
        "rg-lru": {"expand": (1.5, 3.5)},
        "mlstm": {"num_heads": (8, 32)},
        "swiglu": {"hidden_dim": (None, 256, 512)},    # None: 8/3 D rounded up (352 at 128)
        "mlp": {"hidden_dim": (None, 256)},            # None: 4 D
        "moe-mlp": {"num_experts": (4, 8), "active_experts": (1, 2)},
}.items():
    register_search_space(_layer, _choices)


def parse_choices(text: str) -> dict[str, dict[str, tuple]]:
    """"mh-attention.num_heads=4/8,mamba.d_state=4/16" -> {layer: {field: values}} ("" -> {}).
    Values read as integers, numbers, true/false/none, else strings."""
    out: dict[str, dict[str, tuple]] = {}
    for item in (s.strip() for s in (text or "").split(",")):
        if not item:
            continue
        target, sep, values = item.partition("=")
        layer, dot, field = target.strip().rpartition(".")
        if not sep or not dot or not layer or not field:
            raise SearchError(f"choices must look like 'mh-attention.num_heads=4/8', got {item!r}")
        out.setdefault(layer, {})[field] = tuple(parse_scalar(v) for v in values.split("/")
                                                 if v.strip())
    return out


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Genomes of `min_blocks`..`max_blocks` blocks (sequence mixer, channel mixer).

    mixers, channels: registered layer names a block's first and second slot may take.
    choices: {layer: {field: values}} replacing those layers' `SEARCH_SPACES` entries (for this
      space only); layers not named keep their entry, layers without one keep their defaults.
    Raises SearchError (one line) for an empty list, an unknown layer, a bad choice, bad counts.
    """
    mixers: tuple[str, ...]
    channels: tuple[str, ...]
    min_blocks: int = 1
    max_blocks: int = 4
    choices: Choices | Mapping[str, Mapping[str, Sequence[Any]]] | None = None

    def __post_init__(self):
        mixers, channels = _names(self.mixers, "mixers"), _names(self.channels, "channels")
        for count in ("min_blocks", "max_blocks"):
            value = getattr(self, count)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise SearchError(f"{count} must be a positive integer, got {value!r}")
        if self.min_blocks > self.max_blocks:
            raise SearchError(f"min_blocks {self.min_blocks} > max_blocks {self.max_blocks}")
        given = dict(self.choices or {})
        stray = [layer for layer in given if layer not in mixers + channels]
        if stray:
            raise SearchError(f"choices name {', '.join(map(repr, stray))}, which the space's "
                              f"mixers and channels do not hold: {', '.join(mixers + channels)}")
        resolved = []
        for layer in dict.fromkeys(mixers + channels):
            table = (check_choices(layer, dict(given[layer])) if layer in given
                     else SEARCH_SPACES.get(layer) or check_choices(layer, {}))
            if layer not in given and table:  # the module may have been replaced since
                table = check_choices(layer, dict(table))
            if table:
                resolved.append((layer, table))
        object.__setattr__(self, "mixers", mixers)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "choices", tuple(resolved))

    def layer_choices(self, layer: str) -> dict[str, tuple[Any, ...]]:
        """{field: values} the search may give `layer` ({} if none)."""
        return dict(dict(self.choices).get(layer, ()))

    def describe(self) -> dict:
        """The space as JSON (part of a search's identity)."""
        return {"mixers": list(self.mixers), "channels": list(self.channels),
                "min_blocks": int(self.min_blocks), "max_blocks": int(self.max_blocks),
                "choices": {layer: {f: list(v) for f, v in table}
                            for layer, table in self.choices}}

    def size(self) -> float:
        """How many distinct genomes the space holds (an upper bound: shared configs)."""
        per_block = len(self.mixers) * len(self.channels)
        configs = math.prod(len(v) for _, table in self.choices for _, v in table)
        return configs * sum(per_block ** n for n in range(self.min_blocks, self.max_blocks + 1))

    def random_config(self, layer: str, rng: np.random.Generator) -> dict[str, Any]:
        """A value drawn for every choice of `layer`."""
        return {f: values[int(rng.integers(len(values)))]
                for f, values in sorted(self.layer_choices(layer).items())}

    def sample(self, rng: np.random.Generator) -> Genome:
        """A genome drawn uniformly: block count, then each slot, then each layer's config."""
        blocks = int(rng.integers(self.min_blocks, self.max_blocks + 1))
        layers = []
        for _ in range(blocks):
            layers += [self.mixers[int(rng.integers(len(self.mixers)))],
                       self.channels[int(rng.integers(len(self.channels)))]]
        configs = {layer: self.random_config(layer, rng) for layer in dict.fromkeys(layers)}
        return Genome.make(layers, configs)

    def contains(self, genome: Genome) -> bool:
        """Whether the genome is one of this space's (structure and config values)."""
        blocks = genome.blocks
        if not self.min_blocks <= len(blocks) <= self.max_blocks or len(genome.layers) % 2:
            return False
        if any(m not in self.mixers or c not in self.channels for m, c in blocks):
            return False
        return all(field in self.layer_choices(layer)
                   and value in self.layer_choices(layer)[field]
                   for layer, values in genome.configs for field, value in values)


def _names(names: Sequence[str] | str, what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = tuple(dict.fromkeys(n for n in names if n))
    if not names:
        raise SearchError(f"the search space has no {what}; name at least one registered layer "
                          f"(e.g. {'hyena,mh-attention' if what == 'mixers' else 'swiglu'})")
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        raise SearchError(f"unknown layer(s) {', '.join(map(repr, unknown))} in {what}; valid "
                          f"layers: {', '.join(sorted(LAYERS))} (or register your own with "
                          "mad_jax.layers.register_layer)")
    return names

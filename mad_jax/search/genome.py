"""A genome: a striped hybrid over the registered layers, with the config choices it makes.

A genome is a sequence of slots, each a registered layer name, read as blocks of (sequence mixer,
channel mixer) by the search space, plus config values per layer NAME. `models.build` takes
`layer_configs` per layer name, so two slots of the same layer share one config: a config choice
applies to every slot of that layer. (Two differently configured attention layers in one model
are out of this search's reach; register the variant under its own name to search over both.)

Canonical form: configs hold only layers the genome uses and only values that differ from the
layer's default (its registered config over its module's field defaults), sorted. So two genomes
that build the same model are equal and share one `key`, the hash that names their workdir.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping, Sequence

from mad_jax.layers import get_layer_spec
from mad_jax.models import format_layers, parse_layers

Config = tuple[tuple[str, Any], ...]          # sorted (field, value) pairs


def layer_default(layer: str, field: str) -> Any:
    """The value `field` of `layer` takes when nothing overrides it."""
    spec = get_layer_spec(layer)
    if field in spec.config:
        return spec.config[field]
    default = spec.module.__dataclass_fields__[field].default
    return None if default is dataclasses.MISSING else default


@dataclasses.dataclass(frozen=True)
class Genome:
    """layers: the slots, e.g. ("hyena", "swiglu", "mh-attention", "swiglu").
    configs: ((layer name, ((field, value), ...)), ...) in canonical form (build with `make`)."""
    layers: tuple[str, ...]
    configs: tuple[tuple[str, Config], ...] = ()

    @classmethod
    def make(cls, layers: str | Sequence[str],
             configs: Mapping[str, Mapping[str, Any]] | None = None) -> "Genome":
        """The canonical genome of a layer list (or hybrid string) and per-layer-name configs."""
        names = parse_layers(layers)
        canonical = []
        for layer, values in sorted((configs or {}).items()):
            if layer not in names:
                continue
            kept = tuple(sorted((k, v) for k, v in dict(values).items()
                                if v != layer_default(layer, k)))
            if kept:
                canonical.append((layer, kept))
        return cls(names, tuple(canonical))

    @property
    def layer_configs(self) -> dict[str, dict[str, Any]]:
        """`models.build(..., layer_configs=...)` of this genome."""
        return {layer: dict(values) for layer, values in self.configs}

    def config_of(self, layer: str) -> dict[str, Any]:
        return dict(dict(self.configs).get(layer, ()))

    @property
    def blocks(self) -> list[tuple[str, ...]]:
        """The slots in (sequence mixer, channel mixer) pairs."""
        return [self.layers[i:i + 2] for i in range(0, len(self.layers), 2)]

    @property
    def label(self) -> str:
        """The hybrid string, then the config choices: "hyena swiglu [hyena filter_order=16]"."""
        text = format_layers(self.layers)
        if self.configs:
            text += " [" + "; ".join(
                f"{layer} " + " ".join(f"{k}={v}" for k, v in values)
                for layer, values in self.configs) + "]"
        return text

    @classmethod
    def parse(cls, text: str) -> "Genome":
        """The inverse of `label`: "hyena swiglu mh-attention swiglu [mh-attention num_heads=8]"
        (the bracket is optional; a hybrid string alone gives the layers' defaults)."""
        layers, bracket, rest = text.partition("[")
        configs: dict[str, dict[str, Any]] = {}
        if bracket:
            if not rest.rstrip().endswith("]"):
                raise ValueError(f"unbalanced '[' in genome {text!r}")
            for part in rest.rstrip()[:-1].split(";"):
                layer, *pairs = part.split()
                for pair in pairs:
                    field, sep, value = pair.partition("=")
                    if not sep:
                        raise ValueError(f"genome {text!r}: {pair!r} must be field=value")
                    configs.setdefault(layer, {})[field] = parse_scalar(value)
        return cls.make(layers.strip(), configs)

    def to_json(self) -> dict:
        return {"layers": list(self.layers), "configs": self.layer_configs}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "Genome":
        return cls.make(record["layers"], record.get("configs") or {})

    @property
    def key(self) -> str:
        """12 hex digits of the canonical genome's sha256: the name of its workdir."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def parse_scalar(text: str) -> Any:
    """A config value as written: integers, numbers, true/false/none, else the string."""
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue  # not this kind: try the next
    return text

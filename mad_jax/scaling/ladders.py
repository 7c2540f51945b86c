"""Model-size ladders: target parameter count -> width, depth and heads, per architecture family.

A family is a rule for stacking blocks (the MAD paper's scaling families):

  transformer++   (mh-attention swiglu) x n          rotary on the whole head, RMSNorm
  hyena           (hyena swiglu) x n                 Hyena order 2, inner width D, filter FFN 64
  mamba           mamba x n                          Mamba blocks alone (d_state 16, expand 2)
  striped-hyena   (hyena|mh-attention swiglu) x n    a share `attention_ratio` of the n mixers is
  striped-mamba   (mamba|mh-attention swiglu) x n    attention, spread evenly, the last one of them

`n` is the depth (number of sequence mixers). Append "@r" to a striped family name for an attention
ratio r ("striped-hyena@0.5"); the default is 0.25 (one block in four), the paper's best hybrids.
A striped model has round(r n) attention mixers (at least one) and at least 1/r mixers where the
ladder's depth limit allows, so its smallest rungs are not plain transformers.

A ladder spec fixes the grid: widths are multiples of the head width, and the (width, depth) pair
minimising (parameter error / tolerance)^2 + (log2 of width/depth over `aspect_ratio`)^2 wins, so
shapes stay near the preferred aspect ratio while counts stay near the target. Parameters are
counted on the built model (`jax.eval_shape` of its init, no memory used) and include embeddings
and unembedding, as `count_params` does.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import numpy as np

from mad_jax import models


@dataclasses.dataclass(frozen=True)
class LadderSpec:
    """The grid a ladder is drawn on.

    Attributes:
      head_dim: attention head width.
      dim_multiple: widths are multiples of it (and of head_dim).
      aspect_ratio: preferred width / depth.
      min_dim, max_dim, max_depth: bounds of the grid.
      tolerance: the relative parameter error that costs as much as a 2x aspect-ratio error.
      hyena_filter_width: width of Hyena's implicit filter FFN.
      mamba_d_state: Mamba's state size per channel.
      norm: backbone norm.
    """

    head_dim: int
    aspect_ratio: float
    min_dim: int
    max_dim: int
    max_depth: int
    tolerance: float = 0.05
    dim_multiple: int = 0
    hyena_filter_width: int = 64
    mamba_d_state: int = 16
    norm: str = "rmsnorm"


LADDER_SPECS = {
    # CPU-sized models on byte-level text: 8-wide heads (the MAD width-128 setting), shallow stacks.
    "tiny": LadderSpec(head_dim=8, aspect_ratio=16.0, min_dim=16, max_dim=512, max_depth=24,
                       tolerance=0.08, hyena_filter_width=16),
    # CI: as tiny, but one sequence mixer deep so each model compiles in a few seconds.
    "smoke": LadderSpec(head_dim=16, aspect_ratio=32.0, min_dim=16, max_dim=256, max_depth=1,
                        tolerance=0.15, hyena_filter_width=8),
    # The paper's 70M .. 7B grid (GPT-3 / Pythia-like shapes).
    "paper": LadderSpec(head_dim=64, aspect_ratio=64.0, min_dim=256, max_dim=8192, max_depth=96,
                        dim_multiple=128),
}


@dataclasses.dataclass(frozen=True)
class Family:
    """How a family stacks its blocks; see the module docstring."""

    name: str
    mixer: str
    channel_mixer: str | None
    attention_ratio: float = 0.0

    def layers(self, depth: int) -> tuple[str, ...]:
        """Layer names of a depth-`depth` model (depth = number of sequence mixers)."""
        attention = set()
        if self.attention_ratio > 0:
            count = min(depth, max(1, round(self.attention_ratio * depth)))
            attention = {round((j + 1) * depth / count) - 1 for j in range(count)}
        names: list[str] = []
        for i in range(depth):
            names.append("mh-attention" if i in attention else self.mixer)
            if self.channel_mixer:
                names.append(self.channel_mixer)
        return tuple(names)

    def min_depth(self, max_depth: int) -> int:
        """Shallowest stack with the attention ratio (1/ratio mixers), capped at `max_depth`."""
        if self.attention_ratio <= 0:
            return 1
        return max(1, min(math.ceil(1.0 / self.attention_ratio - 1e-9), max_depth))

    def period_depth(self) -> int:
        """A depth at which every kind of block of the family appears."""
        return max(4, math.ceil(1 / self.attention_ratio)) if self.attention_ratio else 1

    def layer_configs(self, dim: int, spec: LadderSpec) -> dict[str, dict[str, Any]]:
        """Per-layer-name config overrides at width `dim` (heads from the head width)."""
        configs: dict[str, dict[str, Any]] = {}
        names = set(self.layers(self.period_depth()))
        if "mh-attention" in names:
            configs["mh-attention"] = {"num_heads": max(1, dim // spec.head_dim),
                                       "rotary_dim": None}
        if "hyena" in names:
            configs["hyena"] = {"inner_factor": 1, "proj_groups": 1,
                                "filter_order": spec.hyena_filter_width}
        if "mamba" in names:
            configs["mamba"] = {"d_state": spec.mamba_d_state, "expand": 2}
        return configs


FAMILIES: dict[str, Family] = {
    "transformer++": Family("transformer++", "mh-attention", "swiglu"),
    "hyena": Family("hyena", "hyena", "swiglu"),
    "mamba": Family("mamba", "mamba", None),
    "striped-hyena": Family("striped-hyena", "hyena", "swiglu", 0.25),
    "striped-mamba": Family("striped-mamba", "mamba", "swiglu", 0.25),
}


def get_family(name: str, attention_ratio: float | None = None) -> Family:
    """The family called `name` ("striped-hyena@0.5" sets the attention ratio in the name).

    `attention_ratio` (when the name has none) applies to striped families; others ignore it.

    Raises ValueError (one line, listing the valid names) for an unknown family or a bad ratio.
    """
    base, _, ratio_text = str(name).partition("@")
    if base not in FAMILIES:
        raise ValueError(f"unknown architecture family {name!r}; valid families: "
                         f"{', '.join(FAMILIES)} (striped families take '@ratio', e.g. "
                         "striped-hyena@0.25)")
    family = FAMILIES[base]
    if ratio_text:
        if family.attention_ratio == 0.0:
            raise ValueError(f"family {base!r} has no attention ratio; use a striped family")
        try:
            attention_ratio = float(ratio_text)
        except ValueError:
            raise ValueError(f"bad attention ratio in family name {name!r}") from None
    if family.attention_ratio == 0.0:
        return family  # a sweep-wide attention_ratio only concerns the striped families
    if attention_ratio is not None and attention_ratio != family.attention_ratio:
        if not 0.0 < attention_ratio <= 1.0:
            raise ValueError(f"attention ratio must be in (0, 1], got {attention_ratio}")
        family = dataclasses.replace(family, name=f"{base}@{attention_ratio:g}",
                                     attention_ratio=attention_ratio)
    return family


@dataclasses.dataclass(frozen=True)
class Rung:
    """One model of a ladder.

    Attributes:
      family: family name (with "@ratio" for a non-default striped ratio).
      target_params: the size asked for.
      params: exact parameter count of the built model.
      dim, depth, num_heads: width, number of sequence mixers, attention heads (0: no attention).
      layers: the layer names, one residual block each.
      layer_configs: per-layer-name config overrides.
      norm: backbone norm.
      vocab_size: vocabulary the count is for.
    """

    family: str
    target_params: float
    params: int
    dim: int
    depth: int
    num_heads: int
    layers: tuple[str, ...]
    layer_configs: Mapping[str, Mapping[str, Any]]
    norm: str
    vocab_size: int

    @property
    def name(self) -> str:
        return f"{self.family}-d{self.dim}-n{self.depth}"

    def build(self, max_length: int, **kwargs):
        """The flax Module of this rung (language-model backbone)."""
        return models.build(self.layers, vocab_size=self.vocab_size, max_length=max_length,
                            dim=self.dim, norm=self.norm, layer_configs=self.layer_configs,
                            **kwargs)


    def forward_flops(self, seq_len: int) -> int:
        """Forward FLOPs per sequence of length `seq_len` (`mad_jax.models.flops`)."""
        return models.flops(self.layers, dim=self.dim, seq_len=seq_len, vocab_size=self.vocab_size,
                            layer_configs=self.layer_configs)

    def train_flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 3 x forward FLOPs per sequence / seq_len (backward = 2 x)."""
        return 3.0 * self.forward_flops(seq_len) / seq_len

    def state_size(self, seq_len: int) -> int:
        """Inference state per sequence, in numbers (`mad_jax.models.state_size`)."""
        return models.state_size(self.layers, dim=self.dim, seq_len=seq_len,
                                 layer_configs=self.layer_configs)

    def to_dict(self) -> dict:
        return {"family": self.family, "target_params": self.target_params, "params": self.params,
                "dim": self.dim, "depth": self.depth, "num_heads": self.num_heads,
                "layers": " ".join(self.layers), "norm": self.norm, "vocab_size": self.vocab_size,
                "layer_configs": {k: dict(v) for k, v in self.layer_configs.items()}}


def _freeze(configs: Mapping[str, Mapping[str, Any]]):
    return tuple(sorted((k, tuple(sorted(v.items()))) for k, v in configs.items()))


# Rungs are counted for this max_length. Hyena filters train a positional embedding of
# max_length x 3 (as the reference's), so a rung built for length L has 3 * (L - 8) more
# parameters per Hyena layer: at most 0.01% of any paper-ladder rung.
COUNT_MAX_LENGTH = 8


@functools.lru_cache(maxsize=4096)
def _exact_params(layers: tuple[str, ...], dim: int, vocab_size: int, norm: str,
                  frozen_configs) -> int:
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    configs = {k: dict(v) for k, v in frozen_configs}
    configs = {k: v for k, v in configs.items() if k in layers}
    model = models.build(layers, vocab_size=vocab_size, max_length=COUNT_MAX_LENGTH, dim=dim,
                         norm=norm, layer_configs=configs)
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, COUNT_MAX_LENGTH), jnp.int32)))
    return models.count_params(shapes["params"])


def count_rung_params(layers: Sequence[str], dim: int, vocab_size: int, norm: str,
                      layer_configs: Mapping[str, Mapping[str, Any]]) -> int:
    """Exact parameter count of the model these arguments build for max_length
    `COUNT_MAX_LENGTH` (abstract init, no memory)."""
    return _exact_params(tuple(layers), dim, vocab_size, norm, _freeze(layer_configs))


class _ParamModel:
    """params(dim, depth) of one family: base(dim) + per-layer(dim) counts, exact at each dim."""

    def __init__(self, family: Family, spec: LadderSpec, vocab_size: int):
        self.family, self.spec, self.vocab_size = family, spec, vocab_size

    def layer_params(self, name: str, dim: int) -> tuple[int, int]:
        """(params of one `name` block, params of everything else) at width `dim`."""
        configs = self.family.layer_configs(dim, self.spec)
        one = count_rung_params((name,), dim, self.vocab_size, self.spec.norm, configs)
        two = count_rung_params((name, name), dim, self.vocab_size, self.spec.norm, configs)
        return two - one, 2 * one - two

    def params(self, dim: int, depth: int) -> int:
        names = self.family.layers(depth)
        total = 0
        base = 0
        for name in set(names):
            per, base = self.layer_params(name, dim)
            total += per * names.count(name)
        return total + base


def _candidate_dims(spec: LadderSpec) -> list[int]:
    step = math.lcm(spec.head_dim, spec.dim_multiple or spec.head_dim)
    return list(range(step * math.ceil(spec.min_dim / step), spec.max_dim + 1, step))


def _fit_quadratic(model: _ParamModel, name: str, dims: Sequence[int]):
    """Per-block and base params as quadratics in dim (from three exact counts), for the search."""
    probe = [dims[0], dims[len(dims) // 2], dims[-1]] if len(dims) >= 3 else list(dims) * 3
    per, base = zip(*(model.layer_params(name, d) for d in probe))
    deg = 2 if len(set(probe)) >= 3 else 0
    return np.polyfit(probe, per, deg), np.polyfit(probe, base, deg)


def _resolve_spec(spec: str | LadderSpec) -> LadderSpec:
    if isinstance(spec, LadderSpec):
        return spec
    if spec not in LADDER_SPECS:
        raise ValueError(f"unknown ladder spec {spec!r}; valid specs: {', '.join(LADDER_SPECS)}")
    return LADDER_SPECS[spec]


def rung(family: str | Family, target_params: float, *, vocab_size: int,
         spec: str | LadderSpec = "tiny", attention_ratio: float | None = None) -> Rung:
    """The model of `family` closest to `target_params` parameters on the `spec` grid."""
    return ladder(family, [target_params], vocab_size=vocab_size, spec=spec,
                  attention_ratio=attention_ratio)[0]


def ladder(family: str | Family, sizes: Sequence[float], *, vocab_size: int,
           spec: str | LadderSpec = "tiny", attention_ratio: float | None = None,
           strict: bool = True) -> list[Rung]:
    """One rung per target size (same order).

    A size with no model within 25% on the spec's grid raises ValueError, or is left out when
    `strict=False` (sweeps share one size list between families of different granularity).

    The search uses quadratic fits of per-block parameters in the width; the returned `params`
    are exact counts of the chosen models.
    """
    fam = family if isinstance(family, Family) else get_family(family, attention_ratio)
    grid = _resolve_spec(spec)
    model = _ParamModel(fam, grid, vocab_size)
    dims = _candidate_dims(grid)
    period_names = set(fam.layers(fam.period_depth()))
    fits = {name: _fit_quadratic(model, name, dims) for name in period_names}

    def approx(dim: int, depth: int) -> float:
        names = fam.layers(depth)
        total = sum(np.polyval(fits[n][0], dim) * names.count(n) for n in set(names))
        return float(total + np.polyval(fits[next(iter(set(names)))][1], dim))

    hard = max(0.25, 2 * grid.tolerance)
    rungs = []
    for target in sizes:
        if not target > 0:
            raise ValueError(f"target parameter counts must be positive, got {target}")
        best = None
        for dim in dims:
            for depth in range(fam.min_depth(grid.max_depth), grid.max_depth + 1):
                n = approx(dim, depth)
                err = abs(math.log(n / target))
                shape = abs(math.log((dim / depth) / grid.aspect_ratio))
                # Parameter error in units of the tolerance, shape error in factors of two; a
                # count more than `hard` off the target is taken only when nothing else is.
                cost = (err / grid.tolerance) ** 2 + (shape / math.log(2.0)) ** 2
                key = (abs(n / target - 1) > hard, cost)
                if best is None or key < best[0]:
                    best = (key, dim, depth)
                if n > target * (1 + grid.tolerance) * 4:
                    break
        _, dim, depth = best
        layers = fam.layers(depth)
        configs = {k: v for k, v in fam.layer_configs(dim, grid).items() if k in layers}
        params = count_rung_params(layers, dim, vocab_size, grid.norm, configs)
        if abs(params / target - 1) > hard:
            if not strict:
                continue
            smallest = model.params(dims[0], fam.min_depth(grid.max_depth))
            largest = model.params(dims[-1], grid.max_depth)
            raise ValueError(f"{fam.name}: no model within {hard:.0%} of {target:.3g} parameters "
                             f"on the {spec if isinstance(spec, str) else 'given'} ladder "
                             f"(it spans ~{smallest:.3g} .. {largest:.3g})")
        heads = configs.get("mh-attention", {}).get("num_heads", 0)
        rungs.append(Rung(fam.name, float(target), int(params), dim, depth, int(heads), layers,
                          configs, grid.norm, vocab_size))

    return rungs

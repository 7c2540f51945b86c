"""Costs of a genome, counted before anything trains, and the budgets they must meet.

Parameters: a model's parameters are its embedding and unembedding plus one block per slot, and a
block's count depends only on its layer, config, the width and the max length. Each block is
counted once, by `jax.eval_shape` of a one-block `models.build` (nothing is allocated) less the
parts outside the blocks, and cached, so checking a genome costs a few additions. State size
and FLOPs come from the layers' own accounting (`models.state_size`, `models.flops`). All three
are counted on the language-model backbone at `seq_len` and `vocab_size`, so every genome is
measured on the same shape.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

from mad_jax import models
from mad_jax.layers import LAYERS
from mad_jax.search.errors import SearchError
from mad_jax.search.genome import Genome


@dataclasses.dataclass(frozen=True)
class Costs:
    params: int
    state: int
    flops: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Budget:
    """Limits on a genome's costs (None: no limit), and the shape they are counted at.

    max_state: numbers kept per sequence to generate the next token, at `seq_len`.
    max_flops: forward FLOPs per sequence of `seq_len` tokens.
    dim, norm: the models' width and norm (those the evaluation trains).
    """
    max_params: int | None = None
    max_state: int | None = None
    max_flops: int | None = None
    seq_len: int = 128
    vocab_size: int = 16
    dim: int = 128
    norm: str = "layernorm"

    def __post_init__(self):
        for field in ("max_params", "max_state", "max_flops"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise SearchError(f"{field} must be a positive number (or unset), got {value!r}")
        for field in ("seq_len", "vocab_size", "dim"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SearchError(f"{field} must be a positive integer, got {value!r}")

    def describe(self) -> dict:
        return dataclasses.asdict(self)

    def violations(self, costs: Costs) -> list[str]:
        """"params 512,000 > max_params 400,000" for every limit `costs` exceeds."""
        out = []
        for what, limit in (("params", self.max_params), ("state", self.max_state),
                            ("flops", self.max_flops)):
            if limit is not None and getattr(costs, what) > limit:
                out.append(f"{what} {getattr(costs, what):,} > max_{what} {int(limit):,}")
        return out

    def costs(self, genome: Genome) -> Costs:
        """The genome's costs; ValueError naming the layer if it cannot be built at this shape."""
        configs = genome.layer_configs
        params = _base_params(self.dim, self.norm, self.seq_len, self.vocab_size)
        for layer in genome.layers:
            params += _block_params(layer, _frozen(configs.get(layer, {})), _spec_key(layer),
                                    self.dim, self.norm, self.seq_len, self.vocab_size)
        state = models.state_size(genome.layers, dim=self.dim, seq_len=self.seq_len,
                                  layer_configs=configs)
        flops = models.flops(genome.layers, dim=self.dim, seq_len=self.seq_len,
                             vocab_size=self.vocab_size, layer_configs=configs)
        return Costs(params=int(params), state=int(state), flops=int(flops))

    def check(self, genome: Genome) -> tuple[Costs | None, str]:
        """(costs, "") for a genome within budget; (costs or None, why not) otherwise."""
        try:
            costs = self.costs(genome)
        except (ValueError, TypeError, NotImplementedError) as e:
            return None, f"does not build: {' '.join(str(e).split())[:200]}"
        return costs, "; ".join(self.violations(costs))


def _frozen(config: dict[str, Any]) -> tuple:
    return tuple(sorted(config.items()))


def _spec_key(layer: str) -> tuple:
    """What a layer's registration is now (a replaced registration is counted afresh)."""
    spec = LAYERS[layer]
    return (spec.module, tuple(sorted(spec.config.items())))


def _count(layers: tuple[str, ...], config: tuple, dim: int, norm: str, seq_len: int,
           vocab_size: int) -> int:
    import jax
    import jax.numpy as jnp

    model = models.build(layers, vocab_size=vocab_size, max_length=seq_len, dim=dim, norm=norm,
                         layer_configs={layers[0]: dict(config)} if config else None)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, seq_len), jnp.int32))
    return models.count_params(shapes["params"])


# (layer, config, registration, shape) -> parameters of one block, or why it does not build
_BLOCKS: dict[tuple, int | str] = {}


def _block_params(layer: str, config: tuple, spec_key: tuple, dim: int, norm: str, seq_len: int,
                  vocab_size: int) -> int:
    """Parameters of one block (norm + layer) of `layer` with `config`; a failure to build is
    kept too, so a space full of unbuildable genomes is rejected quickly."""
    key = (layer, config, spec_key, dim, norm, seq_len, vocab_size)
    if key not in _BLOCKS:
        try:
            _BLOCKS[key] = (_count((layer,), config, dim, norm, seq_len, vocab_size)
                            - _base_params(dim, norm, seq_len, vocab_size))
        except (ValueError, TypeError) as e:
            _BLOCKS[key] = " ".join(str(e).split())
    if isinstance(_BLOCKS[key], str):
        raise ValueError(_BLOCKS[key])
    return _BLOCKS[key]


@functools.lru_cache(maxsize=None)
def _base_params(dim: int, norm: str, seq_len: int, vocab_size: int) -> int:
    """Parameters outside the blocks (embedding, final norm, unembedding): one block's model
    less the block, which is what a second copy of it adds."""
    one = _count(("swiglu",), (), dim, norm, seq_len, vocab_size)
    two = _count(("swiglu", "swiglu"), (), dim, norm, seq_len, vocab_size)
    return 2 * one - two


def check_feasible(sample, budget: Budget, *, tries: int) -> None:
    """Raises SearchError (one line) when none of `tries` genomes drawn by `sample()` meets the
    budget: the budgets (or the space) leave nothing to search."""
    lowest: dict[str, int] = {}
    why = ""
    for _ in range(tries):
        costs, why = budget.check(sample())
        if not why:
            return
        for what in ("params", "state", "flops") if costs is not None else ():
            lowest[what] = min(lowest.get(what, getattr(costs, what)), getattr(costs, what))
    if not lowest:
        raise SearchError(f"none of {tries} genomes drawn from the search space builds at width "
                          f"{budget.dim} (e.g. {why}); change the space's layers or choices")
    seen = ", ".join(f"{what} {value:,}" for what, value in lowest.items()
                     if getattr(budget, f"max_{what}") is not None)
    raise SearchError(f"no genome of {tries} drawn from the search space meets the budgets "
                      f"(max_params {budget.max_params}, max_state {budget.max_state}, "
                      f"max_flops {budget.max_flops}; the smallest drawn: {seen}); raise them "
                      "or widen the space")

"""Variation: mutation (swap a layer, change a config value, insert or delete a block pair) and
crossover (exchange stripes), and the offspring of a generation.

Every function draws from the numpy Generator it is given and from nothing else, so a seed fixes
what comes out. A layer that enters a genome without a config (a swap or an inserted block)
draws its config values from the space.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from mad_jax.search import nsga
from mad_jax.search.genome import Genome, layer_default
from mad_jax.search.space import SearchSpace

MUTATIONS = ("swap", "config", "insert", "delete")


def _with(genome: Genome, layers: Sequence[str], space: SearchSpace,
          rng: np.random.Generator) -> Genome:
    """`layers` keeping the genome's configs; layers new to it draw theirs."""
    configs = {layer: genome.config_of(layer) if layer in genome.layers
               else space.random_config(layer, rng) for layer in dict.fromkeys(layers)}
    return Genome.make(layers, configs)


def applicable_mutations(genome: Genome, space: SearchSpace) -> list[str]:
    """The mutations that can change this genome."""
    out = []
    if len(space.mixers) > 1 or len(space.channels) > 1:
        out.append("swap")
    if any(space.layer_choices(layer) for layer in genome.layers):
        out.append("config")
    if len(genome.blocks) < space.max_blocks:
        out.append("insert")
    if len(genome.blocks) > space.min_blocks:
        out.append("delete")
    return out


def mutate(genome: Genome, space: SearchSpace, rng: np.random.Generator) -> Genome:
    """One mutation drawn among the applicable ones (the genome itself if none applies)."""
    options = applicable_mutations(genome, space)
    if not options:
        return genome
    kind = options[int(rng.integers(len(options)))]
    layers = list(genome.layers)
    if kind == "swap":
        # a slot whose role (mixer or channel) has another layer to take
        slots = [i for i in range(len(layers))
                 if len(space.mixers if i % 2 == 0 else space.channels) > 1]
        slot = slots[int(rng.integers(len(slots)))]
        pool = [n for n in (space.mixers if slot % 2 == 0 else space.channels) if n != layers[slot]]
        layers[slot] = pool[int(rng.integers(len(pool)))]
        return _with(genome, layers, space, rng)
    if kind == "config":
        names = [n for n in dict.fromkeys(layers) if space.layer_choices(n)]
        layer = names[int(rng.integers(len(names)))]
        choices = space.layer_choices(layer)
        fields = sorted(choices)
        field = fields[int(rng.integers(len(fields)))]
        config = genome.config_of(layer)
        current = config.get(field, layer_default(layer, field))
        values = [v for v in choices[field] if v != current] or list(choices[field])
        config[field] = values[int(rng.integers(len(values)))]
        configs = genome.layer_configs
        configs[layer] = config
        return Genome.make(layers, configs)
    if kind == "insert":
        at = 2 * int(rng.integers(len(genome.blocks) + 1))
        block = [space.mixers[int(rng.integers(len(space.mixers)))],
                 space.channels[int(rng.integers(len(space.channels)))]]
        return _with(genome, layers[:at] + block + layers[at:], space, rng)
    at = 2 * int(rng.integers(len(genome.blocks)))  # delete
    return _with(genome, layers[:at] + layers[at + 2:], space, rng)


def crossover(a: Genome, b: Genome, space: SearchSpace, rng: np.random.Generator) -> Genome:
    """Exchange stripes: the child takes a's blocks before a cut and b's blocks from another
    cut (block counts kept within the space's bounds); a layer both parents configure takes
    one parent's config, drawn."""
    blocks_a, blocks_b = a.blocks, b.blocks
    cuts = [(i, j) for i in range(len(blocks_a) + 1) for j in range(len(blocks_b) + 1)
            if space.min_blocks <= i + len(blocks_b) - j <= space.max_blocks]
    i, j = cuts[int(rng.integers(len(cuts)))]
    layers = [n for block in blocks_a[:i] + blocks_b[j:] for n in block]
    configs = {}
    for layer in dict.fromkeys(layers):
        owners = [p for p in (a, b) if layer in p.layers]
        configs[layer] = owners[int(rng.integers(len(owners)))].config_of(layer)
    return Genome.make(layers, configs)


def offspring(population: Sequence[Genome], objectives_NxM: np.ndarray, space: SearchSpace,
              rng: np.random.Generator, count: int, accept: Callable[[Genome], bool], *,
              crossover_prob: float = 0.5, tries: int = 50) -> list[Genome]:
    """`count` new genomes: tournament parents, crossover with `crossover_prob`, then one
    mutation; a child is kept when `accept(child)` (within budget, not met before) and it is not
    a sibling's twin. After `tries` rejections in a row, a child is drawn from the space
    instead; fewer than `count` come back only when that fails too."""
    rank, crowding = nsga.rank_and_crowding(objectives_NxM)
    children: list[Genome] = []
    keys: set[str] = set()
    while len(children) < count:
        for attempt in range(2 * tries):
            if attempt < tries:
                parent = population[nsga.tournament(rng, rank, crowding)]
                if rng.random() < crossover_prob:
                    other = population[nsga.tournament(rng, rank, crowding)]
                    parent = crossover(parent, other, space, rng)
                child = mutate(parent, space, rng)
            else:
                child = space.sample(rng)
            if child.key not in keys and accept(child):
                children.append(child)
                keys.add(child.key)
                break
        else:
            break
    return children

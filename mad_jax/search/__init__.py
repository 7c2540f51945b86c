"""Architecture search over striped hybrids: genomes of registered layers, evolved by NSGA-II
against the MAD proxy score, state size and parameters, under analytic budgets.

    from mad_jax import search
    result = search.run("workdir/search", preset="cpu")          # or preset="full"
    result = search.run("w", preset="cpu", max_params=400_000, population=4, generations=1)
    search.register_search_space("my-layer", {"num_heads": (2, 4)})

Files: genome.py (the genome and its hash), space.py (per-layer config choices, the space),
constraints.py (params / state / FLOPs budgets), nsga.py (selection), variation.py (mutation,
crossover), evaluate.py (scores through protocol.run), store.py (results and state, resume),
report.py (front tables and plots), presets.py (SearchConfig, cpu / full), run.py (the loop),
parallel.py (a generation's genomes on several devices at once), command.py (`run_from_config`
for experiments.sweep).
"""
from mad_jax.search.command import run_from_config
from mad_jax.search.constraints import Budget, Costs
from mad_jax.search.errors import SearchError
from mad_jax.search.evaluate import ProtocolEvaluator
from mad_jax.search.genome import Genome
from mad_jax.search.presets import DEFAULT_HYBRID, PRESETS, SearchConfig, resolve
from mad_jax.search.run import SearchResult, run
from mad_jax.search.space import SEARCH_SPACES, SearchSpace, register_search_space

__all__ = ["Budget", "Costs", "DEFAULT_HYBRID", "Genome", "PRESETS", "ProtocolEvaluator",
           "SEARCH_SPACES", "SearchConfig", "SearchError", "SearchResult", "SearchSpace",
           "register_search_space", "resolve", "run", "run_from_config"]

"""Architecture search over striped hybrids (`kind = "search"`): genomes evolved by NSGA-II
against the MAD proxy score, state size and parameters, under analytic budgets.

    python -m experiments.sweep --config=experiments/configs/search.py:preset=cpu
    python -m experiments.sweep --config=experiments/configs/search.py:cpu,population=4 \
        --config.workdir=/tmp/search
    python -m experiments.sweep --config=experiments/configs/search.py:full \
        --config.max_state=40000 --config.mixers=mh-attention,hyena,mamba2
    python -m experiments.sweep --config=experiments/configs/search.py:full,parallel=auto

Presets (mad_jax/search/presets.py):
  cpu   about 30 minutes on 2 CPU cores: mh-attention, hyena, mamba with SwiGLU, 1-2 blocks at
        width 64 under 130,000 parameters, population 4 over 2 generations, scored on a short
        in-context-recall proxy (one run of 400 steps). Not MAD scores.
  full  the MAD protocol per genome (six tasks, 66 settings x 6 runs), ten mixer families, 1-4
        blocks, population 16 over 8 generations: for accelerators.

Fields left as placeholders (None) take the preset's value, then SearchConfig's default; `train`
fields add to the preset's training overrides (TrainConfig). The workdir: search.json (state),
genomes/<key>/ (each genome's genome.json and protocol results), report.md, genomes.csv,
plots/. Running the same command again resumes, and trains nothing once the search is done.
`parallel` trains that many genomes of a generation at once, each on its own local device
("auto": all of them); the results are the same as one after another.
`--config.print_config=true` prints the resolved settings and stops. The config argument:
experiments/configs/args.py.
"""
from __future__ import annotations

from ml_collections import config_dict

from experiments.configs import args
from mad_jax.training.config import TrainConfig

_ph = config_dict.placeholder
# TrainConfig fields the search sets from its own fields (grid, seed), not from `train`.
SET_BY_SEARCH = ("learning_rate", "weight_decay", "grid", "seeds", "seed", "data_seed")


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.kind = "search"
    c.preset = "cpu"              # cpu | full
    c.workdir = ""                # "" = workdir/search/<preset>
    # The space
    c.mixers = _ph(str)           # sequence mixers, comma-separated registered layer names
    c.channels = _ph(str)         # channel mixers
    c.min_blocks = _ph(int)       # blocks of (mixer, channel mixer)
    c.max_blocks = _ph(int)
    c.choices = _ph(str)          # "mh-attention.num_heads=4/8,mamba.d_state=4/16": replaces
                                  # those layers' entries of mad_jax.search.SEARCH_SPACES
    # Budgets, checked before anything trains (0 = no limit)
    c.max_params = _ph(int)
    c.max_state = _ph(int)        # numbers kept per sequence at seq_len
    c.max_flops = _ph(int)        # forward FLOPs per sequence of seq_len tokens
    c.seq_len = _ph(int)
    c.vocab_size = _ph(int)       # vocabulary the parameters and FLOPs are counted with
    # The proxy score: the protocol on these tasks
    c.tasks = _ph(str)            # comma-separated task names
    c.protocol_preset = _ph(str)  # full | quick | smoke (mad_jax.protocol.PRESETS)
    c.grid = _ph(str)             # "lr:wd,lr:wd"; "" = the protocol preset's
    c.dim = _ph(int)
    c.norm = _ph(str)             # layernorm | rmsnorm
    c.seed = _ph(int)             # data, init and the search's draws
    c.train = args.placeholders(TrainConfig, exclude=SET_BY_SEARCH)
    # The evolution
    c.population = _ph(int)
    c.generations = _ph(int)      # after the first population
    c.crossover_prob = _ph(float)
    c.baseline = _ph(str)         # genome evaluated for comparison; "" = none
    c.progress_every_s = _ph(float)
    c.parallel = _ph(str)         # genomes trained at once, one local device each: 1 | n | auto
    c.report = True
    c.print_config = False        # print the resolved settings and stop
    return args.apply_arg(c, arg)

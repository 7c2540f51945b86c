"""Pretraining IsoFLOP sweeps and scaling-law fits (`kind = "scaling"`).

    python -m experiments.sweep --config=experiments/configs/scaling.py:preset=cpu
    python -m experiments.sweep --config=experiments/configs/scaling.py:smoke \
        --config.workdir=/tmp/s
    python -m experiments.sweep --config=experiments/configs/scaling.py:preset=paper \
        --config.corpus.path=gs://my-bucket/pile-byte --config.train.mesh=data:-1,fsdp:8

Presets:
  smoke   CI: two families, three tiny models, two budgets, a 1 MB corpus; a minute or two on CPU.
  cpu     a laptop hour: transformer++, hyena and striped hyena (25% attention), models of
          12k..450k parameters, budgets 1e11, 3e11 and 1e12 FLOPs on the Python standard library.
  paper   the MAD paper's grid (70M..7B, 4e18..2e20 FLOPs) for TPU pods; needs a real corpus
          (--config.corpus.path, and a `tokenizers` JSON as corpus.tokenizer).

Fields left as placeholders (None) take the preset's value (`resolve`), and `train` fields the
preset does not set take PretrainConfig's defaults (mad_jax/scaling/pretrain.py, written only
there), so both `scaling.py:preset=smoke` and `--config.preset=smoke` pick a preset, and any field
set on the command line wins over it. `--config.print_config=true` prints the resolved config and
stops. The config argument: experiments/configs/args.py.
"""
from __future__ import annotations

from ml_collections import config_dict

from experiments.configs import args
from mad_jax.scaling.pretrain import PretrainConfig

_ph = config_dict.placeholder

PRESETS = {
    "smoke": {
        "families": "transformer++,hyena", "ladder": "smoke", "sizes": "1.2e4,3e4,5.5e4",
        "budgets": "1.5e9,3e9", "seq_len": 32, "global_batch": 8, "min_steps": 10,
        "tokens_per_param_min": 0.1, "tokens_per_param_max": 1000.0,
        "num_eval_windows": 16, "bootstrap": 200,
        "corpus": {"inputs": "stdlib", "max_bytes": 1_000_000},
        "train": {"learning_rate": 5e-3, "log_every_steps": 20, "eval_batch": 8},
    },
    "cpu": {
        "families": "transformer++,hyena,striped-hyena", "ladder": "tiny",
        "sizes": "1.2e4,1.8e4,2.7e4,4e4,6e4,9e4,1.35e5,2e5,3e5,4.5e5", "budgets": "1e11,3e11,1e12",
        "seq_len": 128, "global_batch": 8, "min_steps": 60, "num_eval_windows": 256,
        "bootstrap": 1000,
        "tokens_per_param_min": 2.0, "tokens_per_param_max": 400.0,
        "corpus": {"inputs": "stdlib", "max_bytes": 0},
        "train": {"learning_rate": 3e-3, "log_every_steps": 200, "eval_batch": 32},
    },
    "paper": {
        "families": "transformer++,hyena,mamba,striped-hyena,striped-mamba", "ladder": "paper",
        "sizes": "7e7,1e8,1.6e8,2.5e8,4.1e8,6e8,1e9,1.4e9,2e9,3e9,7e9",
        "budgets": "4e18,8e18,2e19,4e19,8e19,2e20",
        "seq_len": 2048, "global_batch": 256, "min_steps": 1000, "num_eval_windows": 1024,
        "tokens_per_param_min": 2.0, "tokens_per_param_max": 200.0,
        "bootstrap": 1000,
        "corpus": {"inputs": "", "max_bytes": 0},
        "train": {"learning_rate": 8e-4, "log_every_steps": 100, "eval_batch": 32,
                  "checkpoint_every_steps": 1000},
    },
}


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.kind = "scaling"
    c.preset = "cpu"              # smoke | cpu | paper
    c.workdir = ""                # "" = workdir/scaling/<preset>; local path or gs://...
    c.families = _ph(str)         # comma-separated, of mad_jax.scaling.ladders.FAMILIES
    c.attention_ratio = 0.25      # share of attention mixers in the striped families
    c.ladder = _ph(str)           # tiny | paper | smoke (mad_jax.scaling.ladders.LADDER_SPECS)
    c.sizes = _ph(str)            # target parameter counts of the ladder rungs
    c.budgets = _ph(str)          # FLOP budgets, comma-separated
    c.seq_len = _ph(int)
    c.global_batch = _ph(int)
    c.min_steps = _ph(int)        # a model needs this many steps at a budget to be trained there
    c.tokens_per_param_min = _ph(float)  # a model is trained at a budget only inside this window
    c.tokens_per_param_max = _ph(float)
    c.num_eval_windows = _ph(int)
    c.bootstrap = _ph(int)        # bootstrap resamples of the fits' confidence intervals
    c.seed = 0
    c.report = True
    c.plan_only = False           # print the runs (models, tokens, steps, FLOPs) and stop
    c.print_config = False        # print the resolved config (what will run) and stop
    c.distributed = False         # jax.distributed.initialize() first (multi-host pods)
    # MAD scores to correlate with compute-optimal perplexity: "family=score,...", a JSON file
    # {family: score}, or a protocol results.csv (mapped with mad_arch_map: "family=arch,...").
    c.mad_scores = ""
    c.mad_arch_map = ("transformer++=attention,hyena=hyena,mamba=mamba,"
                      "striped-hyena=striped-hyena-attention")
    c.corpus = config_dict.ConfigDict({
        "path": "",               # token store; "" = <workdir>/corpus (built there if missing)
        "inputs": _ph(str),       # text files, directories, globs or "stdlib" (comma-separated)
        "tokenizer": "byte",      # "byte" or a `tokenizers` JSON file
        "validation_fraction": 0.05,
        "max_bytes": _ph(int),    # 0 = no cap
    })
    # Every PretrainConfig field with a default but the seeds (`seed` above); the plan sets the
    # rest (seq_len, global_batch, total_steps).
    c.train = args.placeholders(PretrainConfig, exclude=("seed", "data_seed"))
    return args.apply_arg(c, arg)


def resolve(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """A copy of `config` with placeholders filled from its preset, then (train fields) from
    PretrainConfig's defaults; ValueError for an unknown preset."""
    if config.preset not in PRESETS:
        raise ValueError(f"unknown scaling preset {config.preset!r}; valid presets: "
                         f"{', '.join(PRESETS)}")
    out = config_dict.ConfigDict(config.to_dict())
    for key, value in PRESETS[config.preset].items():
        if isinstance(value, dict):
            _fill(out[key], value)
        elif out.get(key) is None:
            out[key] = value
    _fill(out.train, {k: v for k, v in args.defaults(PretrainConfig).items() if k in out.train})
    if not out.workdir:
        out.workdir = f"workdir/scaling/{config.preset}"
    return out


def _fill(group: config_dict.ConfigDict, values: dict) -> None:
    for key, value in values.items():
        if group.get(key) is None:
            group[key] = value

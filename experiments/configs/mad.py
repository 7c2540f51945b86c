"""The MAD protocol for one architecture.

    python -m experiments.sweep --config=experiments/configs/mad.py
    python -m experiments.sweep --config=experiments/configs/mad.py:smoke --config.workdir=/tmp/w
    python -m experiments.sweep --config=experiments/configs/mad.py \
        --config.layers="mh-attention swiglu mh-attention swiglu" --config.preset=quick \
        --config.tasks=in-context-recall --config.train.train_steps=500

The config argument (after ':') is a preset name and/or comma-separated key=value pairs
(`mad.py:quick,tasks=compression,memorization,report=false`; experiments/configs/args.py).
Unset `train` fields take the preset's value, then TrainConfig's default;
`--config.print_config=true` prints the resolved config (what will run) and stops.
"""
from ml_collections import config_dict

from experiments.configs import args
from mad_jax.training.config import TrainConfig

DEFAULT_LAYERS = "hyena swiglu mh-attention swiglu"
# TrainConfig fields the sweep sets from its own fields, not from `train`.
SET_BY_SWEEP = ("learning_rate", "weight_decay", "grid", "seeds", "seed", "data_seed", "mesh",
                "sharding_rules", "dcn_mesh")


def base_config() -> config_dict.ConfigDict:
    """Fields shared by the MAD sweep configs (mad.py, compare.py, paper.py)."""
    c = config_dict.ConfigDict()
    c.preset = "full"             # full (the MAD protocol) | quick | smoke
    c.workdir = "workdir/mad"
    c.tasks = ""                  # comma-separated task names; "" = all six
    c.seed = 0                    # data seed and first init seed
    c.seeds = 1                   # init seeds per (lr, wd) run, trained in the same program
    c.grid = ""                   # "lr:wd,lr:wd,..."; "" = the protocol's 3 x 2 grid
    c.dim = 128
    c.norm = "layernorm"          # layernorm | rmsnorm
    c.cache_dir = ""              # task data cache; "" = <workdir>/data
    c.jax_cache_dir = ""          # persistent XLA compilation cache; "" = <workdir>/jax_cache
    c.report = True               # write report.md / report.html / plots after the sweep
    c.retry_failed = True         # train runs recorded as failed again (False: keep them)
    c.on_change = "error"         # a finished run whose model/training/metric changed: error | rerun
    c.progress_every_s = 10.0     # at most one progress line per this many seconds
    c.pack = False                # train a task's settings of equal shapes in one program
    c.pack_max_runs = 0           # the most runs in one packed program; 0 = as memory allows
    # Devices (README: "TPU VMs and pod slices"). mesh "" trains on one device; "auto" spreads
    # each grid's runs over the devices (sweep axis) and uses the rest data parallel; or axis
    # sizes, e.g. "sweep:2,data:4" (mad_jax.sharding).
    c.mesh = ""
    c.sharding_rules = ""         # logical-axis overrides, e.g. "embed:none"
    c.dcn_mesh = ""               # axis sizes across TPU slices, e.g. "data:2"
    c.distributed = False         # jax.distributed.initialize() first: every host of a pod slice
    c.print_config = False        # print the resolved config (what will run) and stop
    # Every TrainConfig field but those set above (seed, seeds, grid, mesh); None = the preset's
    # value, else TrainConfig's default (e.g. --config.train.train_steps=500).
    c.train = args.placeholders(TrainConfig, exclude=SET_BY_SWEEP)
    return c


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    c = base_config()
    c.name = ""                   # architecture name in tables; "" = derived from layers
    c.layers = DEFAULT_LAYERS     # compact layer string, e.g. "(hyena swiglu)x2"
    return args.apply_arg(c, arg)

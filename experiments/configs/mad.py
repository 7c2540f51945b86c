"""The MAD protocol for one architecture.

    python -m experiments.sweep --config=experiments/configs/mad.py
    python -m experiments.sweep --config=experiments/configs/mad.py:smoke --config.workdir=/tmp/w
    python -m experiments.sweep --config=experiments/configs/mad.py \
        --config.layers="mh-attention swiglu mh-attention swiglu" --config.preset=quick \
        --config.tasks=in-context-recall --config.train.train_steps=500

The config argument (after ':') is a preset name or comma-separated key=value pairs over the
top-level fields (`mad.py:preset=quick,tasks=compression`).
"""
from ml_collections import config_dict

DEFAULT_LAYERS = "hyena swiglu mh-attention swiglu"


def base_config() -> config_dict.ConfigDict:
    """Fields shared by every sweep config (mad.py, compare.py)."""
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
    # Devices (README: "TPU VMs and pod slices"). mesh "" trains on one device; "auto" spreads
    # each grid's runs over the devices (sweep axis) and uses the rest data parallel; or axis
    # sizes, e.g. "sweep:2,data:4" (mad_jax.sharding).
    c.mesh = ""
    c.sharding_rules = ""         # logical-axis overrides, e.g. "embed:none"
    c.dcn_mesh = ""               # axis sizes across TPU slices, e.g. "data:2"
    c.distributed = False         # jax.distributed.initialize() first: every host of a pod slice
    # Overrides of the preset's training budget (unset = the preset's value).
    c.train = config_dict.ConfigDict({
        "train_steps": config_dict.placeholder(int),
        "train_epochs": config_dict.placeholder(float),
        "batch_size": config_dict.placeholder(int),
        "max_train_examples": config_dict.placeholder(int),
        "max_test_examples": config_dict.placeholder(int),
        "eval_every_steps": config_dict.placeholder(int),
        "checkpoint_every_steps": config_dict.placeholder(int),
        "log_every_steps": config_dict.placeholder(int),
        "stop_accuracy": config_dict.placeholder(float),
        "vmap": config_dict.placeholder(bool),
        "precision": config_dict.placeholder(str),    # float32 | bfloat16
        "schedule": config_dict.placeholder(str),     # per-epoch | per-step
        "select_on": config_dict.placeholder(str),    # test (the reference) | validation
    })
    return c


def apply_arg(c: config_dict.ConfigDict, arg: str | None) -> config_dict.ConfigDict:
    """Applies `preset` or `key=value,...` from the --config=file.py:<arg> suffix."""
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        if "=" not in item:
            c.preset = item
            continue
        key, value = item.split("=", 1)
        if key not in c:
            raise ValueError(f"unknown config field {key!r} in config argument {arg!r}")
        c[key] = _parse_value(key, value, c[key])
    return c


def _parse_value(key: str, text: str, current):
    """`text` as the type of the field's current value (bools: true/false, 1/0, yes/no)."""
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"config field {key!r} takes true or false, got {text!r}")
    if current is None or isinstance(current, str):
        return text
    try:
        return type(current)(text)
    except ValueError:
        raise ValueError(f"config field {key!r} takes a {type(current).__name__}, "
                         f"got {text!r}") from None


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    c = base_config()
    c.name = ""                   # architecture name in tables; "" = derived from layers
    c.layers = DEFAULT_LAYERS     # compact layer string, e.g. "(hyena swiglu)x2"
    return apply_arg(c, arg)

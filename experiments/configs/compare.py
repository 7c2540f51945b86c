"""Several architectures through the same protocol, one comparison table and report.

    python -m experiments.sweep --config=experiments/configs/compare.py:quick \
        --config.workdir=workdir/compare

Default set: the MAD paper's comparison at width 128, two sequence-mixer blocks each with a SwiGLU
channel mixer: Hyena, multi-head Hyena, striped Hyena + attention, Mamba, attention.
"""
from ml_collections import config_dict

from experiments.configs import args
from experiments.configs.mad import base_config

ARCHITECTURES = {
    "hyena": "hyena swiglu hyena swiglu",
    "mh-hyena": "mh-hyena swiglu mh-hyena swiglu",
    "striped-hyena-attention": "hyena swiglu mh-attention swiglu",
    "mamba": "mamba swiglu mamba swiglu",
    "attention": "mh-attention swiglu mh-attention swiglu",
}


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    c = base_config()
    c.workdir = "workdir/compare"
    c.architectures = config_dict.ConfigDict(dict(ARCHITECTURES))  # name -> layer string
    return args.apply_arg(c, arg)

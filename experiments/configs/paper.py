"""The MAD paper's architectures through the protocol, reported beside the paper's table.

    python -m experiments.sweep --config=experiments/configs/paper.py          # full: MAD scores
    python -m experiments.sweep --config=experiments/configs/paper.py:cpu      # a 2-core CPU

Every model is what the paper measured: two blocks of (sequence mixer, channel mixer) at width 128
with each layer's registered default config (the reference's iso-state, iso-parameter defaults,
configs/layers/*.yml of athms/mad-lab), RMSNorm pre-norm residual blocks (the reference's protocol
script, benchmark.py, builds its LanguageModel / AutoEncoder with their default RMSNorm; its
single-run train.py uses LayerNorm, mad_jax's default), max_length = the task's seq_len. The report (`<workdir>/report.md`, section "Beside the paper") puts every score
beside the paper's (`mad_jax/protocol/paper_scores.json`, with its sources), the difference, and
the Spearman rank correlation of the architectures' means.

Variants (the config argument):
  full  the MAD protocol (preset full: 66 settings x 6 (lr, wd), 200 epochs, bf16): MAD scores.
  cpu   a reduced budget a 2-core CPU finishes in about an hour for the default two
        architectures (Transformer and Hyena; add `architectures` to run more): the baselines
        of three tasks on which the paper separates them in opposite directions and by a
        margin (in-context recall: Transformer 94.1 vs Hyena 81.7; compression 51.6 vs 45.2;
        memorization 85.2 vs 89.5, where Hyena leads), one run (lr 1e-3, wd 0) of 6,000 steps
        of batch 8 each (the quick preset: attention needs ~3,000 such steps to leave the
        in-context-recall plateau). NOT MAD scores: it asks only whether the ranking comes out
        the same.
Other fields as in mad.py (`:cpu,seeds=3`, `--config.train.train_steps=...`);
`--config.archs=transformer,hyena,mamba` picks architectures by name.
"""
from ml_collections import config_dict

from experiments.configs import args
from experiments.configs.mad import base_config

# name -> (layer string, why it is built this way). The names are the keys of the paper's rows.
ARCHITECTURES = {
    "transformer": ("mh-attention swiglu mh-attention swiglu",
                    "the reference's default benchmark model (benchmark.py --layers)"),
    "hyena": ("hyena swiglu hyena swiglu",
              "the reference README's protocol example"),
    "mh-hyena": ("mh-hyena swiglu mh-hyena swiglu",
                 "multi-head Hyena (the paper's state expansion of Hyena); ours runs 16 heads "
                 "of width 8, the reference's code 8 of width 16 (README layer table)"),
    "mamba": ("mamba swiglu mamba swiglu", "Mamba sequence mixers with SwiGLU, as the others"),
    "gla": ("gated-linear-attention swiglu gated-linear-attention swiglu",
            "GLA at the reference's default config; the multi-head variant is "
            "mh-gated-linear-attention"),
    "striped-hyena-swiglu": ("hyena swiglu mh-attention swiglu",
                             "the striped hybrid: one Hyena and one attention block"),
    "striped-hyena-moe": ("hyena moe-mlp-paper mh-attention moe-mlp-paper",
                          "the striped hybrid with the paper's MoE channel mixer (the "
                          "reference's MoE computation, not our sparse moe-mlp)"),
    "striped-hyena-experts-moe": ("hyena-experts moe-mlp-paper mh-attention moe-mlp-paper",
                                  "Hyena experts (the paper's sparse sequence mixer) striped "
                                  "with attention, MoE channel mixers"),
}
CPU_ARCHITECTURES = ("transformer", "hyena")
CPU_TASKS = "in-context-recall,compression,memorization"


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    variant, fields = args.parse_arg(arg)
    variant = variant or "full"
    if variant not in ("full", "cpu"):
        raise ValueError(f"unknown paper.py variant {variant!r}; valid: full, cpu")
    c = base_config()
    c.workdir = f"workdir/paper-{variant}"
    c.norm = "rmsnorm"            # as the reference's benchmark.py builds its models
    c.architectures = config_dict.ConfigDict({n: a[0] for n, a in ARCHITECTURES.items()})
    c.archs = ""                  # comma-separated subset of `architectures` to run; "" = all
    c.paper_keys = config_dict.ConfigDict({n: n for n in ARCHITECTURES})
    if variant == "cpu":
        c.archs = ",".join(CPU_ARCHITECTURES)
        c.preset = "quick"
        c.tasks = CPU_TASKS
    return args.set_fields(c, fields, arg=arg)

"""The config argument (`--config=<file>.py:<arg>`), one parser for every config file: typed
values, list values, unknown keys named with the valid ones; config defaults written once (in
the dataclasses) and resolved."""
import dataclasses

import pytest
from ml_collections import config_dict

from experiments.configs import args, compare, mad, paper, scaling
from mad_jax.scaling.pretrain import PretrainConfig
from mad_jax.training import TrainConfig


def _config():
    return config_dict.ConfigDict({
        "preset": "full", "report": True, "seeds": 1, "rate": 1.0, "name": "", "sizes": (1, 2),
        "steps": config_dict.placeholder(int), "note": None,
        "train": {"lr": config_dict.placeholder(float), "vmap": config_dict.placeholder(bool)}})


def test_parse_arg_splits_the_word_and_keeps_list_values_whole():
    assert args.parse_arg(None) == (None, [])
    assert args.parse_arg("quick") == ("quick", [])
    assert args.parse_arg("quick,tasks=a,b,grid=1e-3:0,1e-3:0.1,report=false") == (
        "quick", [("tasks", "a,b"), ("grid", "1e-3:0,1e-3:0.1"), ("report", "false")])


@pytest.mark.parametrize("text, value", [
    ("false", False), ("False", False), ("0", False), ("no", False),
    ("true", True), ("TRUE", True), ("1", True), ("yes", True)])
def test_booleans(text, value):
    assert args.apply_arg(_config(), f"report={text}").report is value
    assert args.apply_arg(_config(), f"train.vmap={text}").train.vmap is value


def test_numbers_strings_lists_placeholders_and_the_preset():
    c = args.apply_arg(_config(), "smoke,seeds=3,rate=2,name=a b,sizes=3,4,5,steps=7,note=x,"
                                  "train.lr=1e-3")
    assert (c.preset, c.seeds, c.rate, c.name, c.sizes) == ("smoke", 3, 2.0, "a b", (3, 4, 5))
    assert (c.steps, c.note, c.train.lr) == (7, "x", 1e-3)
    assert isinstance(c.rate, float) and isinstance(c.train.lr, float)


@pytest.mark.parametrize("arg, message", [
    ("colour=red", "unknown config field 'colour' in config argument 'colour=red'; valid: name, "
                   "note, preset, rate, report, seeds, sizes, steps, train"),
    ("train.b1=0.9", "unknown config field 'train.b1' in config argument 'train.b1=0.9'; "
                     "valid: lr, vmap"),
    ("optim.lr=1", "unknown config group 'optim' of 'optim.lr' in config argument 'optim.lr=1'; "
                   "groups: train"),
    ("train=1", "config field 'train' is a group; set its fields as train.<field> (lr, vmap)"),
    ("report=maybe", "config field 'report' takes true or false, got 'maybe'"),
    ("seeds=1.5", "config field 'seeds' takes an integer, got '1.5'"),
    ("steps=many", "config field 'steps' takes an integer, got 'many'"),
    ("rate=fast", "config field 'rate' takes a number, got 'fast'"),
])
def test_bad_arguments_are_one_line(arg, message):
    with pytest.raises(ValueError) as e:
        args.apply_arg(_config(), arg)
    assert str(e.value) == message


def test_every_config_file_reads_its_argument_the_same_way():
    # report=false turns the report off in every file (the CLI test checks no report is written).
    for config in (mad.get_config("report=false,distributed=false"),
                   compare.get_config("quick,report=false,distributed=0"),
                   paper.get_config("cpu,report=false,distributed=no"),
                   scaling.get_config("smoke,report=false,distributed=false")):
        assert config.report is False and config.distributed is False
    assert mad.get_config("quick").preset == "quick"
    assert mad.get_config("tasks=compression,memorization,seeds=3").tasks == (
        "compression,memorization")
    assert mad.get_config("train.train_steps=50").train.train_steps == 50
    assert scaling.get_config("preset=paper,train.learning_rate=1e-3").train.learning_rate == 1e-3
    cpu = paper.get_config("cpu,seeds=2,tasks=memorization")
    assert (cpu.preset, cpu.seeds, cpu.tasks) == ("quick", 2, "memorization")
    for get_config in (mad.get_config, compare.get_config, paper.get_config, scaling.get_config):
        with pytest.raises(ValueError, match="unknown config field 'colour'"):
            get_config("colour=red")
        with pytest.raises(ValueError, match="'report' takes true or false"):
            get_config("report=maybe")  # not read as false


def test_train_groups_are_the_dataclass_fields():
    group = mad.get_config().train
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(group) == fields - set(mad.SET_BY_SWEEP)
    assert all(v is None for v in group.values())  # unset: the preset's value, then the default
    assert group.get_ref("train_epochs").get_type() is float
    assert group.get_ref("vmap").get_type() is bool
    scaling_group = scaling.get_config().train
    assert set(scaling_group) == {f.name for f in dataclasses.fields(PretrainConfig)
                                  if f.default is not dataclasses.MISSING} - {"seed", "data_seed"}


def test_scaling_resolution_fills_the_preset_then_the_dataclass_defaults():
    resolved = scaling.resolve(scaling.get_config("preset=smoke,seq_len=64,train.b2=0.9"))
    assert resolved.seq_len == 64 and resolved.families == "transformer++,hyena"
    assert resolved.workdir == "workdir/scaling/smoke"
    assert resolved.train.learning_rate == 5e-3 and resolved.train.b2 == 0.9  # preset, argument
    defaults = args.defaults(PretrainConfig)
    for key in ("min_learning_rate_ratio", "warmup_fraction", "grad_clip", "mesh", "eps",
                "checkpoint_every_steps"):
        assert resolved.train[key] == defaults[key], key
    with pytest.raises(ValueError, match="unknown scaling preset 'huge'"):
        scaling.resolve(scaling.get_config("huge"))

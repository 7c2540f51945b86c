"""The MAD difficulty grid: 66 settings, baseline first, one change at a time."""
import numpy as np
import pytest

from mad_jax import tasks

EXPECTED = {  # task -> (number of settings, changes)
    "in-context-recall": (11, {"vocab_size": [32, 64, 128], "seq_len": [256, 512, 1024],
                               "num_train_examples": [6400, 3200, 1600, 800]}),
    "fuzzy-in-context-recall": (11, {"vocab_size": [32, 64, 128], "seq_len": [256, 512, 1024],
                                     "num_train_examples": [6400, 3200, 1600, 800]}),
    "noisy-in-context-recall": (14, {"vocab_size": [48, 80, 144], "seq_len": [256, 512, 1024],
                                     "num_train_examples": [6400, 3200, 1600, 800],
                                     "frac_noise": [0.4, 0.6, 0.8]}),
    "selective-copying": (13, {"vocab_size": [32, 64, 128], "seq_len": [512, 1024],
                               "num_train_examples": [6400, 3200, 1600, 800],
                               "num_tokens_to_copy": [32, 64, 96]}),
    "compression": (11, {"vocab_size": [32, 64, 128], "seq_len": [64, 128, 256],
                         "num_train_examples": [6400, 3200, 1600, 800]}),
    "memorization": (6, {"vocab_size": [512, 1024, 2048, 4096, 8192]}),
}
BASELINES = {
    "in-context-recall": {"vocab_size": 16, "seq_len": 128, "num_train_examples": 12800,
                          "noise_vocab_size": 0, "frac_noise": 0.0},
    "fuzzy-in-context-recall": {"vocab_size": 16, "seq_len": 128, "num_train_examples": 12800,
                                "k_motif_size": 3, "v_motif_size": 3},
    "noisy-in-context-recall": {"vocab_size": 32, "noise_vocab_size": 16, "seq_len": 128,
                                "num_train_examples": 12800, "frac_noise": 0.2},
    "selective-copying": {"vocab_size": 16, "seq_len": 256, "num_tokens_to_copy": 16,
                          "num_train_examples": 12800},
    "compression": {"vocab_size": 16, "seq_len": 32, "num_train_examples": 12800},
    "memorization": {"vocab_size": 256, "seq_len": 32, "num_train_examples": 256},
}


def test_tasks_tuple():
    assert tasks.TASKS == ("in-context-recall", "noisy-in-context-recall",
                           "fuzzy-in-context-recall", "selective-copying", "compression",
                           "memorization")


def test_66_settings():
    assert sum(len(tasks.settings(t)) for t in tasks.TASKS) == 66


@pytest.mark.parametrize("task", tasks.TASKS)
def test_grid_contents(task):
    count, changes = EXPECTED[task]
    grid = tasks.settings(task)
    assert len(grid) == count
    base = grid[0]
    assert base == {**BASELINES[task], "num_test_examples": 1280}
    assert tasks.setting_name(task, base) == "baseline"
    assert tasks.difficulty_variable(task, base) == (None, None)
    got = {}
    for setting in grid[1:]:
        assert setting.keys() == base.keys()  # every parameter explicit
        (key, value), = [(k, v) for k, v in setting.items() if v != base[k]]
        got.setdefault(key, []).append(value)
        assert tasks.setting_name(task, setting) == f"{key}={value}"
        assert tasks.difficulty_variable(task, setting) == (key, value)
    assert got == changes  # grid order: each key's values in turn


def test_settings_are_fresh_copies():
    tasks.settings("compression")[0]["vocab_size"] = 999
    assert tasks.settings("compression")[0]["vocab_size"] == 16


def test_setting_name_partial_and_multiple_changes():
    assert tasks.setting_name("in-context-recall", {"seq_len": 128}) == "baseline"
    assert tasks.setting_name("in-context-recall", {"seq_len": 256, "vocab_size": 32}) == \
        "vocab_size=32,seq_len=256"
    with pytest.raises(ValueError, match="more than one key"):
        tasks.difficulty_variable("in-context-recall", {"seq_len": 256, "vocab_size": 32})
    with pytest.raises(ValueError, match="unknown setting key"):
        tasks.setting_name("compression", {"frac_noise": 0.1})
    # the validation split's size does not make another grid setting
    base = tasks.settings("compression")[0]
    assert tasks.setting_name("compression", {**base, "num_validation_examples": 64}) == \
        "baseline"


@pytest.mark.parametrize("task", tasks.TASKS)
def test_every_setting_generates(task):
    for setting in tasks.settings(task):
        for split in ("train", "validation", "test"):
            inputs, targets = tasks.generate(task, num_examples=2, seed=0, split=split, **setting)
            # the model sees the sequence minus its last token: seq_len - 1 tokens for the two
            # recall tasks; fuzzy recall's sequences have seq_len + 1 tokens, as the reference's
            drops_last = task in ("in-context-recall", "noisy-in-context-recall")
            assert inputs.shape == (2, setting["seq_len"] - drops_last)
            assert 0 <= inputs.min() and inputs.max() < setting["vocab_size"]
            assert ((targets == -100) | ((targets >= 0) & (targets < setting["vocab_size"]))).all()
            assert (targets != -100).any(axis=1).all()
            assert inputs.dtype == targets.dtype == np.int32

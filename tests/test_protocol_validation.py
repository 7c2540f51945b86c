"""Every mistake is caught before training, in one line, with nothing written; labels never call
changed, partial or failed results MAD scores."""
import pandas as pd
import pytest

from experiments import sweep
from experiments.configs import mad
from mad_jax import models, protocol, sharding
from mad_jax.models import accounting, hybrid
from mad_jax.protocol import report
from mad_jax.training import TrainConfig
from tiny_runs import SHORTEST_RUN

TASK = "memorization"
TINY = SHORTEST_RUN


def build(layers="swiglu", dim=16, vocab_shrink=0):
    def model_fn(task, vocab_size, max_length):
        return models.build(layers, vocab_size=vocab_size - vocab_shrink, max_length=max_length,
                            dim=dim)
    return model_fn


def refused(out_dir, match, model_fn=None, **kw):
    kw.setdefault("train_overrides", TINY)
    with pytest.raises(protocol.ProtocolError, match=match) as e:
        protocol.run(model_fn or build(), str(out_dir), tasks=kw.pop("tasks", [TASK]),
                     preset="smoke", log=lambda s: None, **kw)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
    assert not out_dir.exists(), "nothing may be written before validation passes"


@pytest.mark.parametrize("overrides, match", [
    ({"train_steps": -5}, "train_steps must be a positive integer"),
    ({"train_steps": 0}, "train_steps must be a positive integer"),   # no runs of 0 steps
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"max_train_examples": -1}, "max_train_examples must be a positive integer"),
    ({"weight_decay": -0.1}, "weight_decay must be a number >= 0"),
    # The trainer's own mesh checks, before anything trains (8 simulated devices, 6 runs).
    ({"mesh": "sweep:4,data:2"}, r"its sweep axis \(4\) does not divide the 6 runs trained "
                                 r"together; use mesh='auto' or 'sweep:2,data:-1'"),
    ({"mesh": "data:-1", "batch_size": 4}, r"batch_size 4 does not divide over the mesh's data "
                                           r"x fsdp axes \(8 devices\)"),
    ({"sharding_rules": "embed:none"}, "dcn_mesh and sharding_rules need a mesh"),
])
def test_training_fields_out_of_range(tmp_path, overrides, match):
    refused(tmp_path / "w", match, train_overrides=dict(TINY, **overrides))


def test_bad_grid_and_tasks(tmp_path):
    refused(tmp_path / "w", r"grid run \(lr=-0.001, wd=0\): the learning rate must be > 0",
            grid=((-1e-3, 0.0),))
    refused(tmp_path / "w", "no task given", tasks=",")


def test_layer_config_against_dim_names_the_layer(tmp_path):
    refused(tmp_path / "w", r"layer 'mh-attention' \(block 0\) does not build at dim=100: width "
            r"100 is not divisible by num_heads=16; choose a dim",
            model_fn=build("mh-attention swiglu", dim=100))


def test_model_with_fewer_classes_than_the_vocabulary(tmp_path):
    refused(tmp_path / "w", "scores 248 token classes but the task's vocabulary has 256",
            model_fn=build(vocab_shrink=8))


def test_model_fn_returning_none(tmp_path):
    refused(tmp_path / "w", "model_fn returned NoneType", model_fn=lambda t, v, m: None)


def test_trainer_refuses_a_model_smaller_than_its_data():
    import numpy as np
    from mad_jax import training

    x = np.random.default_rng(0).integers(0, 16, (16, 8)).astype(np.int32)
    small = models.build("swiglu", vocab_size=8, max_length=8, dim=16)
    with pytest.raises(ValueError, match="scores 8 token classes but the task's vocabulary has"):
        training.fit(small, (x, x), (x, x), dict(TINY, max_train_examples=None), log=lambda s: None)


def test_small_mistakes_have_clear_messages(tmp_path):
    with pytest.raises(ValueError, match=r"'\)x' needs a repeat count"):
        hybrid.parse_layers("(hyena swiglu)x")
    with pytest.raises(ValueError, match="dim must be a positive integer, got -1"):
        accounting.state_size("mh-attention", dim=-1, seq_len=8)
    c = mad.get_config(f"workdir={tmp_path}")
    c.mesh = "foo"
    with pytest.raises(protocol.ProtocolError) as e:
        sweep.prepare(c)
    assert str(e.value).endswith("e.g. 'data:-1,tensor:2'")  # the closing quote is kept
    with pytest.raises(sharding.DistributedError, match="on a TPU pod slice run the same command"):
        sharding.initialize(True)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        TrainConfig.from_any({"seed": -1})


# --- labels ---

def test_only_the_unchanged_full_protocol_is_labelled_mad_scores():
    full = protocol.get_preset("full")
    default = protocol.train_config(full)
    assert protocol.is_mad_protocol(full, default, training_grid())
    assert not protocol.is_mad_protocol(full, protocol.train_config(
        full, overrides={"train_steps": 4, "max_train_examples": 64}), training_grid())
    assert not protocol.is_mad_protocol(full, default, ((1e-3, 0.0),))
    changed = pd.DataFrame([{"arch": "a", "preset": "full", "task": TASK, "setting": "baseline",
                             "learning_rate": 1e-3, "weight_decay": 0.0, "status": "ok",
                             "final_test_acc": 0.5, "is_mad_score": False}])
    notice = report.preset_notice(changed)
    assert "NOT MAD scores" in notice and "budget or grid differs" in notice


def training_grid():
    from mad_jax.training import DEFAULT_GRID
    return DEFAULT_GRID


def test_all_failed_task_shows_failed_and_the_sweep_exits_3():
    rows = [{"arch": "a", "preset": "full", "task": t, "setting": "baseline",
             "learning_rate": lr, "weight_decay": 0.0, "status": status,
             "final_test_acc": acc}
            for t, status, acc in ((TASK, "ok", 0.7), ("compression", "failed", None))
            for lr in (1e-3, 1e-4)]
    results = pd.DataFrame(rows)
    table = report.format_score_table(results)
    assert "| a | 0.700 | failed | failed |" in table, table
    assert "2 run(s) failed" in report.preset_notice(results)
    status, message = sweep.outcome(results)
    assert status == sweep.EXIT_RUNS_FAILED == 3 and "2 of 4 runs failed" in message
    assert sweep.outcome(results[results["status"] == "ok"]) == (0, "")

"""A workdir never serves stale results: every run's fingerprint covers the model's full config,
the training config and the metric's code version; a change is redone or refused by `on_change`."""
import json
import shutil

import flax.linen as nn
import pytest

from mad_jax import models, protocol
from mad_jax.layers import registry
from mad_jax.protocol import fingerprint, results_table
from tiny_runs import SHORTEST_RUN

TASK = "memorization"
GRID = ((1e-3, 0.0),)
TINY = SHORTEST_RUN


def model_fn_of(layers="swiglu", dim=16, **kw):
    def model_fn(task, vocab_size, max_length):
        return models.build(layers, vocab_size=vocab_size, max_length=max_length, dim=dim, **kw)
    return model_fn


def run(out_dir, model_fn=None, messages=None, **kw):
    kw.setdefault("train_overrides", TINY)
    log = messages.append if messages is not None else (lambda s: None)
    return protocol.run(model_fn or model_fn_of(), str(out_dir), tasks=[TASK], grid=GRID,
                        preset="smoke", arch="tiny", log=log, **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    return out, run(out)


@pytest.fixture
def workdir(tmp_path, finished):
    out = tmp_path / "w"
    shutil.copytree(finished[0], out)
    return out


def test_rows_carry_fingerprints_and_result_files_the_identity(finished):
    out, results = finished
    assert results["fingerprint"].str.fullmatch(r"[0-9a-f]{16}").all()
    stored = json.loads((out / "runs" / TASK / "baseline" / "result.json").read_text())
    assert stored["identity"]["model"]["dim"] == 16
    assert stored["identity"]["versions"] == fingerprint.versions()
    assert stored["rows"][0]["fingerprint"] == results["fingerprint"].iloc[0]


def test_describe_is_stable_and_sees_every_layer_field():
    a = fingerprint.describe(model_fn_of("hyena swiglu")(TASK, 16, 32))
    assert fingerprint.canonical(a) == fingerprint.canonical(
        fingerprint.describe(model_fn_of("hyena swiglu")(TASK, 16, 32)))
    assert "0x" not in fingerprint.canonical(a)  # no memory addresses
    b = fingerprint.describe(model_fn_of("hyena swiglu", layer_configs={"hyena": {"order": 3}})(
        TASK, 16, 32))
    assert "resolved_layers[0].order: 2 -> 3" in fingerprint.first_differences(a, b, limit=5)


@pytest.mark.parametrize("change, named", [
    (dict(dim=32), "model.dim: 16 -> 32"),
    (dict(layers="swiglu swiglu"), "model.layers"),           # a fixed model_fn, same arch name
    (dict(norm="rmsnorm"), "model.norm: 'layernorm' -> 'rmsnorm'"),
])
def test_changed_model_is_refused_naming_the_field(workdir, change, named):
    with pytest.raises(protocol.ProtocolError) as e:
        run(workdir, model_fn_of(**change))
    message = str(e.value)
    assert named in message and "on_change=rerun" in message and "\n" not in message
    assert len(message) < 400


def test_changed_model_is_trained_again_under_rerun(workdir, finished):
    messages = []
    again = run(workdir, model_fn_of(dim=32), messages=messages, on_change="rerun")
    assert any("1 finished run(s) changed (model.dim: 16 -> 32" in m and "training them again" in m
               for m in messages)
    assert not any("done, skipped" in m for m in messages)
    assert (again["fingerprint"] != finished[1]["fingerprint"]).all()
    assert again["params"].iloc[0] != finished[1]["params"].iloc[0]
    messages.clear()
    run(workdir, model_fn_of(dim=32), messages=messages)  # now it is the stored identity
    assert any("done, skipped" in m for m in messages)


def test_a_new_metric_version_invalidates_finished_runs(workdir, monkeypatch):
    monkeypatch.setattr(fingerprint, "METRIC_VERSION", fingerprint.METRIC_VERSION + 1)
    with pytest.raises(protocol.ProtocolError, match=r"versions\.metric: 2 -> 3"):
        run(workdir)


def test_fields_that_do_not_change_results_keep_runs_done(workdir):
    messages = []
    run(workdir, messages=messages, train_overrides=dict(TINY, log_every_steps=2,
                                                         checkpoint_every_steps=1))
    assert any("done, skipped" in m for m in messages)


def test_rows_without_fingerprint_are_not_trusted(workdir):
    path = workdir / "results.csv"
    results = results_table.read(path)
    results_table.write(path, results.drop(columns=["fingerprint"]))
    with pytest.raises(protocol.ProtocolError, match="no fingerprint"):
        run(workdir)
    messages = []
    run(workdir, messages=messages, on_change="rerun")
    assert any("training them again" in m for m in messages)


def test_changed_training_field_reruns_under_rerun(workdir, finished):
    messages = []
    again = run(workdir, messages=messages, on_change="rerun",
                train_overrides=dict(TINY, train_steps=3))
    assert any("the protocol changed (train.train_steps: 2 -> 3)" in m for m in messages)
    assert list(again["steps"]) == [3]
    assert [p.name for p in workdir.iterdir() if p.name.startswith("results.csv.replaced-")]


def test_user_module_is_described_by_class_fields_and_source():
    class Mine(nn.Module):
        width: int = 4

        @nn.compact
        def __call__(self, x):
            return x

    d = fingerprint.describe(Mine(width=3))
    assert d["width"] == 3 and d["module"]["source"] and d["module"]["class"].endswith("Mine")


def test_reregistered_layer_changes_the_identity():
    class Ident(nn.Module):
        scale: float = 1.0

        @nn.compact
        def __call__(self, x_BxLxD):
            return self.scale * x_BxLxD

    registry.register_layer("identity-for-fingerprint", Ident, {"scale": 1.0})
    try:
        build = model_fn_of("identity-for-fingerprint swiglu")
        before = fingerprint.describe(build(TASK, 16, 32))
        registry.register_layer("identity-for-fingerprint", Ident, {"scale": 2.0}, overwrite=True)
        after = fingerprint.describe(build(TASK, 16, 32))
        assert "resolved_layers[0].scale: 1.0 -> 2.0" in fingerprint.first_differences(before,
                                                                                        after)
    finally:
        registry.LAYERS.pop("identity-for-fingerprint")


def test_bad_policy():
    with pytest.raises(protocol.ProtocolError, match="on_change must be one of error, rerun"):
        run("/tmp/unused-protocol-dir", on_change="ignore")


def test_fingerprints_survive_the_csv_as_text(tmp_path):
    rows = [dict(arch="a", task=TASK, setting="baseline", learning_rate=1e-3, weight_decay=0.0,
                 seed=0, status="ok", final_test_acc=0.5, fingerprint=fp)
            for fp in ("0012345678901234", "12e4567890123456")]  # digits only, and float-like
    path = tmp_path / "results.csv"
    results_table.write(path, results_table.upsert(results_table.empty(), rows[:1]))
    assert results_table.read(path)["fingerprint"].tolist() == ["0012345678901234"]
    results_table.write(path, results_table.upsert(results_table.empty(), rows[1:]))
    assert results_table.read(path)["fingerprint"].tolist() == ["12e4567890123456"]
    path.write_text(path.read_text().replace("12e4567890123456", "not-a-fingerprint"))
    with pytest.raises(results_table.ResultsError, match="has fingerprint 'not-a-fingerprint'"):
        results_table.read(path)


# Fingerprints computed by the release before the runner redesign: results written then must stay
# valid (a changed fingerprint would refuse or redo every finished run of a user's workdir).
STABLE_FINGERPRINTS = [
    # task, layers, preset, layer_configs, model part, train part, run (lr 1e-3, wd 0.1, seed 0)
    ("in-context-recall", "hyena swiglu mh-attention swiglu", "full", None,
     "77e6465819c45cc0", "bf848f98917de523", "87b75b2eb267ad36"),
    ("compression", "hyena swiglu mh-attention swiglu", "smoke", None,
     "c6c4dd3360ec6558", "80c5768d5dd9888c", "16d1b802bba6089a"),
    ("memorization", "(mamba swiglu)x2", "quick", {"mamba": {"d_state": 8}},
     "d0d2fefcf53c0685", "1434a67a965343af", "9bdfc325ab22c07f"),
]


@pytest.mark.parametrize("task,layers,preset,configs,model_fp,train_fp,run_fp",
                         STABLE_FINGERPRINTS)
def test_fingerprints_are_stable_across_releases(task, layers, preset, configs, model_fp,
                                                 train_fp, run_fp):
    import importlib

    from mad_jax import tasks
    from mad_jax.protocol.presets import get_preset

    run_module = importlib.import_module("mad_jax.protocol.run")
    setting = tasks.settings(task)[0]
    model = models.build(layers, vocab_size=setting["vocab_size"], max_length=setting["seq_len"],
                         backbone=tasks.TASK_BACKBONE[task], layer_configs=configs)
    cfg = run_module.train_config(get_preset(preset), seed=0)
    identity = run_module.setting_identity(model, task, setting, cfg)
    assert fingerprint.fingerprint(identity["model"]) == model_fp
    assert fingerprint.fingerprint(identity["train"]) == train_fp
    assert run_module.run_fingerprint(identity, 1e-3, 0.1, 0) == run_fp

"""The MAD protocol: scores on a hand-made table, the results table, presets, a smoke protocol
end to end on one task, kill-and-resume through `run`, the report, and bad input."""
import dataclasses
import json
import os

import flax.linen as nn
import numpy as np
import pandas as pd
import pytest

from mad_jax import models, protocol, tasks, training
from mad_jax.protocol import results_table
from mad_jax.protocol.progress import Progress
from tiny_runs import TINY_RUN

TASK = "memorization"
GRID = ((1e-3, 0.0), (5e-3, 0.1))
TINY = TINY_RUN
TIMING = ["wall_time_s", "compile_time_s"]


def tiny_model_fn(task, vocab_size, max_length):
    return models.build("swiglu", vocab_size=vocab_size, max_length=max_length, dim=16)


class FailsOnBatches(nn.Module):
    """A model that builds and checks out on one example but fails on a training batch."""
    inner: nn.Module

    @nn.compact
    def __call__(self, x_BxL, **kw):
        if x_BxL.shape[0] > 1:
            raise RuntimeError("this model fails on batches")
        return self.inner(x_BxL, **kw)


def run_tiny(out_dir, **kw):
    kw.setdefault("log", lambda s: None)
    kw.setdefault("train_overrides", TINY)
    return protocol.run(tiny_model_fn, str(out_dir), tasks=[TASK], grid=GRID, preset="smoke",
                        arch="tiny", **kw)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    messages = []
    results = run_tiny(out, log=messages.append)
    return out, results, messages


# --- scores ---

def _row(task, setting, lr, acc, status="ok", arch="a", best=None):
    return {"arch": arch, "task": task, "setting": setting, "learning_rate": lr,
            "weight_decay": 0.0, "status": status, "final_test_acc": acc,
            "best_test_acc": acc if best is None else best}


HAND = [
    _row("A", "baseline", 1e-4, 0.5), _row("A", "baseline", 5e-4, 0.7),
    _row("A", "baseline", 1e-3, float("nan"), status="failed"),
    _row("A", "vocab_size=32", 1e-4, 0.2), _row("A", "vocab_size=32", 5e-4, 0.4, best=0.6),
    _row("B", "baseline", 1e-4, float("nan"), status="failed"),
    _row("B", "seq_len=256", 1e-4, 1.0),
]


def test_scores_on_hand_made_table():
    s = protocol.scores(pd.DataFrame(HAND))
    # A: settings 0.7 and 0.4 -> 0.55; B: all-failed baseline scores 0, other 1.0 -> 0.5.
    assert s == pytest.approx({"A": 0.55, "B": 0.5, "mean": 0.525})
    best = protocol.scores(HAND, metric="best_test_acc")
    assert best["A"] == pytest.approx((0.7 + 0.6) / 2)


def test_scores_several_archs_and_table():
    rows = HAND + [dict(r, arch="b", final_test_acc=1.0 if r["status"] == "ok" else np.nan)
                   for r in HAND]
    with pytest.raises(ValueError, match="several architectures"):
        protocol.scores(rows)
    assert protocol.scores(rows, arch="b") == pytest.approx({"A": 1.0, "B": 0.5, "mean": 0.75})
    table = protocol.score_table(pd.DataFrame(rows))
    assert list(table.index) == ["a", "b"] and list(table.columns) == ["A", "B", "mean"]
    assert table.loc["a", "mean"] == pytest.approx(0.525)
    text = protocol.format_score_table(pd.DataFrame(rows))
    assert text.splitlines()[0] == "| arch | A | B | mean |"
    assert "| a | 0.550 | 0.500 | 0.525 |" in text


def test_results_table_roundtrip_and_upsert(tmp_path):
    path = tmp_path / "results.csv"
    first = results_table.upsert(results_table.empty(), [
        {"arch": "a", "task": "A", "setting": "baseline", "learning_rate": 1e-4,
         "weight_decay": 0.0, "status": "ok", "final_test_acc": 0.5,
         "setting_params": {"vocab_size": 16}}])
    results_table.write(path, first)
    again = results_table.upsert(results_table.read(path), [
        {"arch": "a", "task": "A", "setting": "baseline", "learning_rate": 0.0001,
         "weight_decay": 0.0, "status": "ok", "final_test_acc": 0.75}])
    assert len(again) == 1 and again["final_test_acc"].iloc[0] == 0.75
    assert list(again.columns) == list(results_table.COLUMNS)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    with pytest.raises(ValueError, match="unknown result columns"):
        results_table.make_row(acc=1)


# --- presets ---

def test_presets():
    full = protocol.get_preset("full")
    assert full.is_mad and not protocol.get_preset("smoke").is_mad
    assert full.grid is None and protocol.get_preset("smoke").grid is None  # the protocol's 6
    assert protocol.get_preset("quick").grid == ((1e-3, 0.0),)
    assert len(protocol.plan(protocol.check_tasks(None), full)) == 66
    assert len(protocol.plan(protocol.check_tasks(None), protocol.get_preset("quick"))) == 6
    cfg = protocol.train_config(full)
    assert (cfg.train_epochs, cfg.batch_size, cfg.min_learning_rate) == (200, 128, 1e-6)
    # The full preset is TrainConfig's defaults (written there only) in bf16.
    defaults = dataclasses.asdict(training.TrainConfig())
    assert {k for k, v in dataclasses.asdict(cfg).items() if v != defaults[k]} == {
        "precision", "log_every_steps"}
    assert protocol.train_config(full, overrides={"train_steps": 5}).train_epochs is None
    # Layers: the preset over the defaults, the seed, then overrides (None: not set); a budget
    # given one way replaces the layer below's whole family.
    quick = protocol.train_config("quick", seed=3, overrides={"train_epochs": 2,
                                                              "batch_size": None})
    assert (quick.train_steps, quick.train_epochs, quick.batch_size) == (None, 2, 8)
    assert (quick.seed, quick.data_seed, quick.eval_every_steps) == (3, 3, 250)
    with pytest.raises(ValueError, match="unknown preset"):
        protocol.get_preset("fast")


def test_scores_select_on_validation_metric_micro_and_seed_intervals():
    def row(setting, lr, seed, test, val, micro):
        return {"arch": "a", "task": "A", "setting": setting, "learning_rate": lr,
                "weight_decay": 0.0, "seed": seed, "status": "ok", "final_test_acc": test,
                "final_val_acc": val, "final_test_acc_micro": micro,
                "final_val_acc_micro": val, "select_on": "validation"}
    rows = [row("baseline", 1e-4, 0, test=0.9, val=0.2, micro=0.95),
            row("baseline", 1e-3, 0, test=0.5, val=0.8, micro=0.6),
            row("baseline", 1e-4, 1, test=0.7, val=0.9, micro=0.75),
            row("baseline", 1e-3, 1, test=0.6, val=0.1, micro=0.65)]
    # On validation: seed 0 picks lr 1e-3 (test 0.5), seed 1 picks 1e-4 (test 0.7): mean 0.6.
    assert protocol.scores(rows)["A"] == pytest.approx(0.6)
    # On test (the reference's selection): 0.9 and 0.7.
    assert protocol.scores(rows, select_on="test")["A"] == pytest.approx(0.8)
    assert protocol.scores(rows, select_on="test",
                           metric="final_test_acc_micro")["A"] == pytest.approx(0.85)
    per_setting = protocol.setting_scores(rows)
    assert list(per_setting["learning_rate"]) == [1e-3, 1e-4]
    iv = protocol.score_intervals(rows).set_index("task")
    # Two seeds (0.5, 0.7): mean 0.6, half-width t(1) * sd / sqrt(2) = 12.706 * 0.1414 / 1.414.
    assert iv.loc["A", "seeds"] == 2 and iv.loc["A", "score"] == pytest.approx(0.6)
    assert iv.loc["A", "high"] - 0.6 == pytest.approx(12.706 * 0.1, rel=1e-3)
    assert iv.loc["mean", "score"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="unknown metric"):
        protocol.scores(rows, metric="accuracy")
    with pytest.raises(ValueError, match="no 'final_val_acc' column"):
        protocol.scores(HAND, select_on="validation")


def test_protocol_seeds_train_together_and_resume_adds_seeds(tmp_path):
    out = tmp_path / "seeds"
    results = run_tiny(out, seeds=2)
    assert sorted(zip(results["learning_rate"], results["seed"])) == [
        (1e-3, 0), (1e-3, 1), (5e-3, 0), (5e-3, 1)]
    assert set(results["grid_size"]) == {4}  # one program: 2 (lr, wd) x 2 seeds
    assert (out / "runs" / TASK / "baseline" / "lr=0.001,wd=0,seed=1" / "metrics.jsonl").exists()
    iv = protocol.score_intervals(results).set_index("task")
    assert iv.loc[TASK, "seeds"] == 2 and iv.loc[TASK, "low"] <= iv.loc[TASK, "high"]
    messages = []
    again = run_tiny(out, seeds=3, log=messages.append)  # only seed 2 is trained
    assert len(again) == 6 and set(again["seed"]) == {0, 1, 2}
    assert set(again[again["seed"] == 2]["grid_size"]) == {2}
    with pytest.raises(protocol.ProtocolError, match="seeds must be a positive integer"):
        run_tiny(tmp_path / "bad", seeds=0)


# --- end to end ---

def test_smoke_protocol_end_to_end(smoke_run):
    out, results, messages = smoke_run
    assert len(results) == len(GRID)
    assert set(results["preset"]) == {"smoke"} and set(results["task"]) == {TASK}
    assert set(results["setting"]) == {"baseline"} and set(results["status"]) == {"ok"}
    assert (results["steps"] == 4).all() and (results["params"] > 0).all()
    assert results["final_test_acc"].between(0, 1).all()
    on_disk = results_table.read(out / "results.csv")
    pd.testing.assert_frame_equal(on_disk[["learning_rate", "final_test_acc"]],
                                  results[["learning_rate", "final_test_acc"]].astype(float))
    run_dir = out / "runs" / TASK / "baseline"
    assert (run_dir / "lr=0.001,wd=0" / "metrics.jsonl").exists()
    assert json.loads((run_dir / "result.json").read_text())["preset"] == "smoke"
    assert json.loads((out / "protocol.json").read_text())["is_mad_score"] is False
    assert not (run_dir / "checkpoints").exists()
    s = protocol.scores(results)
    assert set(s) == {TASK, "mean"}


def test_train_one_setting_matches_the_protocol(smoke_run):
    _, results, _ = smoke_run
    setting = tasks.settings(TASK)[0]
    # The smoke preset decays per step (TrainConfig's default is the reference's per epoch).
    res = training.train(tiny_model_fn, {"task": TASK, **setting},
                         dict(TINY, grid=GRID, schedule="per-step"), log=lambda s: None)
    assert [r["final_test_acc"] for r in res["runs"]] == list(results["final_test_acc"])
    assert res["final_test_acc"] == max(results["final_test_acc"])
    with pytest.raises(ValueError, match="unknown task"):
        training.train(tiny_model_fn, {"task": "recall", **setting}, TINY)


def test_finished_runs_are_never_redone(smoke_run):
    out, results, _ = smoke_run
    messages = []
    again = run_tiny(out, log=messages.append)
    assert any("done, skipped" in m for m in messages)
    pd.testing.assert_frame_equal(again, results_table.read(out / "results.csv"))


def test_protocol_kill_and_resume(tmp_path, smoke_run, monkeypatch):
    _, uninterrupted, _ = smoke_run
    original = Progress.__call__

    def killed_at_step_3(self, info):
        if info["step"] == 3:
            raise KeyboardInterrupt
        original(self, info)

    monkeypatch.setattr(Progress, "__call__", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tmp_path)
    assert os.path.isdir(tmp_path / "runs" / TASK / "baseline" / "checkpoints" / "2")
    monkeypatch.setattr(Progress, "__call__", original)
    messages = []
    resumed = run_tiny(tmp_path, log=messages.append)
    assert any("resuming from step 2/4" in m for m in messages)
    pd.testing.assert_frame_equal(resumed.drop(columns=TIMING),
                                  uninterrupted.drop(columns=TIMING))


def test_report(smoke_run):
    out, results, _ = smoke_run
    import matplotlib
    backend = matplotlib.get_backend()
    paths = protocol.write_report(str(out), results)
    assert matplotlib.get_backend() == backend  # a notebook's backend is left alone
    md = open(paths["md"]).read()
    assert "NOT MAD scores" in md and "| arch |" in md and "plots/mad_scores.png" in md
    assert os.path.getsize(paths["scores_png"]) > 1000
    assert "<table" in open(paths["html"]).read()


def test_difficulty_plot_from_several_settings(tmp_path):
    rows = []
    for setting, key, value, acc in (("baseline", None, None, 0.9), ("vocab_size=32", "vocab_size",
                                                                      32, 0.6),
                                     ("vocab_size=64", "vocab_size", 64, 0.3)):
        rows.append(dict(_row("in-context-recall", setting, 1e-3, acc), preset="full",
                         difficulty_key=key, difficulty_value=value, wall_time_s=1.0,
                         setting_params=json.dumps({"vocab_size": 16})))
    paths = protocol.write_report(str(tmp_path), pd.DataFrame(rows))
    assert os.path.getsize(paths["difficulty_in-context-recall"]) > 1000
    # Full-preset rows, but 3 of the task's settings: scores, not MAD scores.
    assert ("NOT MAD scores: not every setting ran (in-context-recall 3/"
            in open(paths["md"]).read())


# --- bad input ---

def test_bad_input(tmp_path):
    with pytest.raises(protocol.ProtocolError, match="unknown task.*'recall'.*valid tasks"):
        protocol.run(tiny_model_fn, str(tmp_path), tasks=["recall"])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(protocol.ProtocolError, match="not writable"):
        protocol.run(tiny_model_fn, str(blocker / "sub"), tasks=[TASK])
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        protocol.run(lambda t, v, m: models.build("nope", vocab_size=v, max_length=m),
                     str(tmp_path / "a"), tasks=[TASK], preset="smoke", train_overrides=TINY,
                     log=lambda s: None)


def test_workdir_of_another_preset_is_refused(smoke_run):
    out, _, _ = smoke_run
    with pytest.raises(protocol.ProtocolError, match="preset: 'smoke' -> 'quick'"):
        protocol.run(tiny_model_fn, str(out), tasks=[TASK], grid=GRID, preset="quick",
                     arch="tiny", train_overrides=TINY, log=lambda s: None)


def test_changed_training_field_is_named_in_one_line(smoke_run):
    out, _, _ = smoke_run
    with pytest.raises(protocol.ProtocolError) as e:
        run_tiny(out, train_overrides=dict(TINY, train_steps=8))
    message = str(e.value)
    assert "train.train_steps: 4 -> 8" in message and "\n" not in message
    assert len(message) < 300  # names the field, never dumps the configs


def test_failed_runs_are_retried_unless_kept(tmp_path):
    broken = {"on": True}

    def model_fn(task, vocab_size, max_length):
        model = tiny_model_fn(task, vocab_size, max_length)
        return FailsOnBatches(model) if broken["on"] else model  # fails inside training

    def run(**kw):
        return protocol.run(model_fn, str(tmp_path), tasks=[TASK], grid=GRID, preset="smoke",
                            arch="tiny", train_overrides=TINY, log=messages.append, **kw)
    messages = []
    assert set(run()["status"]) == {"failed"}
    broken["on"] = False
    kept = run(retry_failed=False)  # the failure stays as it was
    assert set(kept["status"]) == {"failed"} and any("done, skipped" in m for m in messages)
    messages.clear()
    retried = run()
    assert set(retried["status"]) == {"ok"} and len(retried) == len(GRID)
    assert any("2 failed run(s)" in m and "trained again" in m for m in messages)
    assert set(results_table.read(tmp_path / "results.csv")["status"]) == {"ok"}


@pytest.mark.parametrize("damage", ["mid-row", "mid-header", "bad-status"])
def test_damaged_results_file_is_set_aside_and_rebuilt(tmp_path, smoke_run, damage):
    import shutil

    src, results, _ = smoke_run
    out = tmp_path / "w"
    shutil.copytree(src, out)
    path = out / "results.csv"
    text = path.read_text()
    if damage == "mid-row":
        text = text[:len(text) - len(text.splitlines()[-1]) // 2 - 1]
    elif damage == "mid-header":
        text = text[:40]
    else:
        text = text.replace(",ok,", ",done,", 1)
    path.write_text(text)
    with pytest.raises(results_table.ResultsError, match="results.csv is damaged"):
        results_table.read(path)
    messages = []
    again = run_tiny(out, log=messages.append)
    assert any("is damaged" in m and "rebuilt 2 rows" in m for m in messages)
    assert any("done, skipped" in m for m in messages)  # nothing that finished is trained again
    assert [p.name for p in out.iterdir() if p.name.startswith("results.csv.corrupt-")]
    pd.testing.assert_frame_equal(again.drop(columns=TIMING).reset_index(drop=True),
                                  results.drop(columns=TIMING).reset_index(drop=True),
                                  check_dtype=False)


def test_crashing_setting_is_recorded_and_sweep_goes_on(tmp_path):
    class Broken(Exception):
        pass

    def model_fn(task, vocab_size, max_length):
        model = tiny_model_fn(task, vocab_size, max_length)
        if task == "compression":
            return FailsOnBatches(model)  # fails inside training, not in model_fn
        return model

    messages = []
    results = protocol.run(model_fn, str(tmp_path), tasks=["compression", TASK], grid=GRID,
                           preset="smoke", arch="tiny", train_overrides=TINY, log=messages.append)
    failed = results[results["task"] == "compression"]
    assert (failed["status"] == "failed").all() and failed["error"].str.len().gt(0).all()
    assert (results[results["task"] == TASK]["status"] == "ok").all()
    assert (tmp_path / "runs" / "compression" / "baseline" / "error.txt").exists()
    assert any("FAILED" in m for m in messages)
    assert np.isfinite(protocol.scores(results)[TASK])


def test_paper_comparison_cells_means_and_rank_correlation():
    from mad_jax.protocol import paper

    table = paper.load_paper_scores()
    assert [r["key"] for r in table["rows"]][:2] == ["transformer", "hyena"]
    for row in table["rows"]:  # each stored mean is the mean of its six tasks (to rounding)
        assert np.mean(list(row["scores"].values())) == pytest.approx(row["mean"], abs=0.06)

    def rows(arch, accs):
        return [{"arch": arch, "task": t, "setting": "baseline", "learning_rate": 1e-3,
                 "weight_decay": 0.0, "status": "ok", "final_test_acc": a}
                for t, a in accs.items()]
    results = pd.DataFrame(
        rows("attn", {"in-context-recall": 0.9, "memorization": 0.8})
        + rows("hyena", {"in-context-recall": 0.7, "memorization": 0.9})
        + rows("mamba", {"in-context-recall": 0.8, "memorization": 0.85})
        + rows("mine", {"in-context-recall": 0.5, "memorization": 0.5}))
    out = paper.compare(results, paper_keys={"attn": "transformer"})
    cells = out["cells"].set_index(["arch", "task"])
    assert cells.loc[("attn", "in-context-recall"), "ours"] == pytest.approx(90.0)
    assert cells.loc[("attn", "in-context-recall"), "diff"] == pytest.approx(90.0 - 94.1)
    assert "mine" not in set(out["cells"]["arch"])  # no paper row: left out
    means = out["means"].set_index("arch")
    # The paper's means over the same two tasks: Transformer (94.1 + 85.2) / 2, ...
    assert means.loc["attn", "paper_score"] == pytest.approx((94.1 + 85.2) / 2)
    # Means: ours attn 85, hyena 80, mamba 82.5 (ranks 3, 1, 2); the paper's 89.65, 85.6, 89.95
    # (ranks 2, 1, 3): rank differences (1, 0, -1), rho = 1 - 6 * 2 / (3 * (9 - 1)) = 0.5.
    assert out["spearman"] == pytest.approx(0.5)
    assert paper.spearman([1, 2], [1, 1]) != paper.spearman([1, 2], [1, 1])  # NaN: no ranking
    text = paper.format_comparison(out)
    assert "Spearman rank correlation of the means over 3 architectures: +0.50" in text
    assert "| attn | Transformer | memorization | 80.0 (1/6) | 85.2 | -5.2 |" in text
    assert "not like for like" in text  # one setting of each task's grid was run
    with pytest.raises(ValueError, match="no paper row 'rnn'"):
        paper.compare(results, paper_keys={"mine": "rnn"})


def test_report_shows_paper_comparison_and_selection(smoke_run, tmp_path):
    _, results, _ = smoke_run
    paths = protocol.write_report(str(tmp_path), results.assign(arch="hyena"),
                                  paper_keys={"hyena": "hyena"})
    text = open(paths["md"]).read()
    assert "## Beside the paper" in text and "| hyena | Hyena | memorization |" in text
    assert "macro accuracy" in text and "chosen on the test set" in text


def test_select_on_validation_end_to_end(tmp_path):
    results = run_tiny(tmp_path / "val", train_overrides=dict(TINY, select_on="validation"))
    assert set(results["select_on"]) == {"validation"}
    assert results["final_val_acc"].between(0, 1).all()
    assert results["final_val_acc_micro"].between(0, 1).all()
    per_setting = protocol.setting_scores(results)
    chosen = results.loc[results["final_val_acc"].idxmax()]
    assert per_setting["score"].iloc[0] == chosen["final_test_acc"]
    text = open(protocol.write_report(str(tmp_path / "rep"), results)["md"]).read()
    assert "chosen on the held-out validation split" in text


def _assert_same_rows(a, b, n):
    """Two results tables hold the same n runs with the same outcomes (sums in another order)."""
    key = ["task", "setting", "learning_rate", "weight_decay", "seed"]
    a, b = (t.sort_values(key).reset_index(drop=True) for t in (a, b))
    assert len(a) == len(b) == n and (a[key] == b[key]).all().all()
    cols = ["final_test_acc", "best_test_acc", "test_loss", "final_train_loss"]
    np.testing.assert_allclose(a[cols].to_numpy(float), b[cols].to_numpy(float), rtol=1e-4,
                               atol=1e-5)
    steps = ["steps", "total_steps", "best_step"]
    assert (a[steps] == b[steps]).all().all()


def test_packed_settings_give_the_rows_of_settings_trained_one_by_one(tmp_path):
    """pack=True trains compression's settings of vocabulary 16 and length 32 (the baseline and
    two training-set sizes, capped here) in one program and the vocabulary-32 one alone: the
    same rows as one by one, up to float rounding of sums; a second run trains nothing. (Packed
    runs of different budgets: tests/test_training.py.)"""
    from mad_jax.protocol.presets import Preset

    preset = Preset("tiny-sizes", "three settings of one shape, a few steps",
                    settings=("baseline", "vocab_size=32", "num_train_examples=1600",
                              "num_train_examples=800"),
                    train={"train_epochs": 2, "batch_size": 8, "max_train_examples": 32,
                           "max_test_examples": 16, "eval_every_epochs": 1,
                           "log_every_steps": 2}, grid=((3e-3, 0.0),))

    def run(out, pack, log=lambda s: None):
        return protocol.run(tiny_model_fn, str(out), tasks=["compression"], preset=preset,
                            arch="tiny", pack=pack, log=log)

    messages = []
    packed = run(tmp_path / "packed", True, messages.append)
    alone = run(tmp_path / "alone", False)
    assert any("3 settings packed" in m for m in messages), messages
    _assert_same_rows(packed, alone, 4)
    messages.clear()
    run(tmp_path / "packed", True, messages.append)
    assert sum("done, skipped" in m for m in messages) == 4


def test_a_preset_naming_no_setting_of_a_task_is_one_line(tmp_path):
    from mad_jax.protocol.presets import Preset

    preset = Preset("named", "two named settings", settings=("vocab_size=9999",), train={})
    with pytest.raises(protocol.ProtocolError, match="names no setting of compression"):
        protocol.run(tiny_model_fn, str(tmp_path / "w"), tasks=["compression"], preset=preset,
                     log=lambda s: None)
    assert not (tmp_path / "w").exists()


# --- packed programs bounded by memory or pack_max_runs ---

def test_pack_size_grows_with_params_batch_and_length_and_fits_at_least_one_run():
    from mad_jax.protocol import pack_size

    def size(dim=16, batch_size=8, seq_len=32):
        model = models.build("swiglu", vocab_size=16, max_length=64, dim=dim)
        return pack_size.run_bytes(model, batch_size=batch_size, seq_len=seq_len)

    base = size()
    wider, larger_batch, longer = size(dim=32), size(batch_size=16), size(seq_len=64)
    assert wider.params > base.params and wider.state == 16 * wider.params
    assert wider.total > base.total
    assert larger_batch.activations > base.activations and larger_batch.state == base.state
    assert longer.activations > base.activations
    model = models.build("swiglu", vocab_size=16, max_length=64, dim=16)
    assert pack_size.max_runs(model, batch_size=8, seq_len=32, memory_bytes=1)[0] == 1
    runs, reason = pack_size.max_runs(model, batch_size=8, seq_len=32,
                                      memory_bytes=10 * base.total + 1)
    assert runs == 10 and "memory bound" in reason
    limit, source = pack_size.memory_limit()
    assert limit > 0 and "GiB" in source


def test_pack_max_runs_splits_a_batch_of_settings_into_programs_with_the_same_rows(tmp_path):
    """Three compression settings of one shape, one run each: pack_max_runs=2 trains them as a
    program of two and one alone, with the rows of the unbounded pack (one program of three)."""
    from mad_jax.protocol.presets import Preset

    preset = Preset("tiny-sizes", "three settings of one shape, a few steps",
                    settings=("baseline", "num_train_examples=1600", "num_train_examples=800"),
                    train={"train_epochs": 2, "batch_size": 8, "max_train_examples": 32,
                           "max_test_examples": 16, "eval_every_epochs": 1,
                           "log_every_steps": 2}, grid=((3e-3, 0.0),))

    def run(out, log, **kw):
        return protocol.run(tiny_model_fn, str(out), tasks=["compression"], preset=preset,
                            arch="tiny", pack=True, log=log, **kw)

    bounded_log, unbounded_log = [], []
    bounded = run(tmp_path / "bounded", bounded_log.append, pack_max_runs=2)
    unbounded = run(tmp_path / "unbounded", unbounded_log.append)
    assert any("3 settings of equal shapes in 2 programs of at most 2 runs (pack_max_runs=2)"
               in m for m in bounded_log), bounded_log
    assert any("2 settings packed" in m for m in bounded_log), bounded_log
    assert any("3 settings packed" in m for m in unbounded_log), unbounded_log
    _assert_same_rows(bounded, unbounded, 3)


@pytest.mark.parametrize("value", [0, -2, 2.5, "4", True])
def test_a_bad_pack_max_runs_is_one_line(tmp_path, value):
    with pytest.raises(ValueError, match="pack_max_runs must be a positive int") as e:
        protocol.prepare(tiny_model_fn, str(tmp_path / "w"), tasks=[TASK], preset="smoke",
                         pack=True, pack_max_runs=value)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="set pack=True"):
        protocol.prepare(tiny_model_fn, str(tmp_path / "w"), tasks=[TASK], preset="smoke",
                         pack_max_runs=4)
    assert not (tmp_path / "w").exists()

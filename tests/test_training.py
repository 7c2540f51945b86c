"""Training: budgets, schedule, losses, the vmapped grid against sequential runs, NaN handling,
determinism, and kill-and-resume from checkpoints (tiny Flax model, random data, CPU)."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import training
from tiny_runs import copy_data
from mad_jax.training import TrainConfig, to_steps
from mad_jax.training.losses import class_stats, macro_accuracy, sum_aux_losses, token_stats
from mad_jax.training.optimizer import make_optimizer, set_hyperparams, warmup_cosine

VOCAB, LENGTH, DIM = 16, 16, 32


class TinyLM(nn.Module):
    """Embedding, one causal attention block, one MLP, unembedding; sows an auxiliary loss."""

    vocab_size: int = VOCAB
    dim: int = DIM
    aux_weight: float = 0.0

    @nn.compact
    def __call__(self, tokens_BxL):
        x = nn.Embed(self.vocab_size, self.dim)(tokens_BxL)
        mask = nn.make_causal_mask(tokens_BxL)
        x = x + nn.SelfAttention(num_heads=2, qkv_features=self.dim)(nn.LayerNorm()(x), mask=mask)
        x = x + nn.Dense(self.dim)(nn.gelu(nn.Dense(2 * self.dim)(nn.LayerNorm()(x))))
        if self.aux_weight:
            self.sow("losses", "aux_loss", self.aux_weight * jnp.mean(x ** 2))
        return nn.Dense(self.vocab_size)(nn.LayerNorm(name="final_norm")(x))


def batch_fn_for(inputs, targets, batch_size, seed=0):
    """A resumable numpy batch stream (step s is a pure function of s), like tasks.batches."""
    per_epoch = len(inputs) // batch_size

    def batch_fn(start_step):
        step = start_step
        while True:
            epoch, i = divmod(step, per_epoch)
            rows = np.random.default_rng([seed, epoch]).permutation(len(inputs))
            rows = rows[i * batch_size:(i + 1) * batch_size]
            yield {"inputs": inputs[rows], "targets": targets[rows]}
            step += 1
    return batch_fn


TRAIN = copy_data(128, 0, vocab_size=VOCAB, length=LENGTH)
TEST = copy_data(40, 1, vocab_size=VOCAB, length=LENGTH)
BASE = dict(batch_size=16, train_steps=12, eval_every_steps=4, log_every_steps=1,
            checkpoint_every_steps=5, stop_accuracy=None)


MODEL = TinyLM()


def fit(config, **kw):
    cfg = dict(BASE, **config)
    return training.fit(MODEL, TRAIN, TEST, cfg, batch_fn=batch_fn_for(*TRAIN, cfg["batch_size"]),
                        log=kw.pop("log", lambda s: None), **kw)


@pytest.fixture(scope="module")
def grid_vmapped():
    return fit({"grid": training.DEFAULT_GRID})


# --- budgets and config ---

def test_to_steps_units():
    n, b = 800, 128  # an epoch is 800 // 128 = 6 whole batches
    assert to_steps({"train_steps": 7}, "train", num_train_examples=n, batch_size=b) == 7
    assert to_steps({"train_epochs": 200}, "train", num_train_examples=n, batch_size=b) == 1200
    assert to_steps({"train_epochs": 0.5}, "train", num_train_examples=n, batch_size=b) == 3
    assert to_steps({"train_examples": 1000}, "train", num_train_examples=n, batch_size=b) == 8
    assert to_steps({"eval_every_epochs": 1}, "eval_every", num_train_examples=12800,
                    batch_size=128) == 100
    assert to_steps({}, "checkpoint_every", num_train_examples=n, batch_size=b) is None
    with pytest.raises(ValueError, match="only one of"):
        to_steps({"train_steps": 1, "train_epochs": 1}, "train", num_train_examples=n, batch_size=b)


def test_train_config_budget_families_and_unknown_keys():
    cfg = TrainConfig.from_any({"train_steps": 10})
    assert (cfg.train_steps, cfg.train_epochs) == (10, None)
    assert cfg.eval_every_epochs == 1  # other families keep their defaults
    assert TrainConfig().train_epochs == 200 and TrainConfig().batch_size == 128
    with pytest.raises(ValueError, match="unknown training config keys.*lerning_rate"):
        TrainConfig.from_any({"lerning_rate": 1e-3})


def cosine(step, total, peak, decay_every_steps=1):
    return warmup_cosine(step, total_steps=total, peak=peak, floor=1e-6,
                         decay_every_steps=decay_every_steps)


def test_cosine_schedule_per_step_and_per_epoch():
    peak = jnp.float32(1e-3)
    assert float(cosine(0, 100, peak)) == pytest.approx(1e-3)
    assert float(cosine(50, 100, peak)) == pytest.approx((1e-3 + 1e-6) / 2)
    assert float(cosine(100, 100, peak)) == pytest.approx(1e-6)
    # Per epoch (10 steps each, 4 epochs): torch's CosineAnnealingLR(T_max=4) stepped per epoch.
    torch_rates = [1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + np.cos(np.pi * e / 4)) for e in range(4)]
    ours = [float(cosine(s, 40, peak, decay_every_steps=10)) for s in range(40)]
    np.testing.assert_allclose(ours, np.repeat(torch_rates, 10), rtol=1e-6)


def test_weight_decay_applies_to_every_parameter():
    """The reference decays all parameters (torch AdamW over model.parameters())."""
    params = training.init_params(MODEL, jax.random.key(0), jnp.asarray(TRAIN[0][:1]))
    tx = make_optimizer()
    state = set_hyperparams(tx.init(params), learning_rate=jnp.float32(0.1),
                            weight_decay=jnp.float32(0.5))
    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, state, params)
    # With zero gradients the update is pure decoupled decay: -lr * wd * p, for every leaf.
    for update, param in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(update, -0.05 * param, rtol=1e-6, atol=1e-12)
    assert float(params["final_norm"]["scale"][0]) == 1.0  # norms and biases are decayed too


# --- losses ---

def test_token_stats_by_hand():
    logits = jnp.log(jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]]]))
    targets = jnp.array([[0, 1, -100]])
    stats = token_stats(logits, targets)
    assert float(stats.count) == 2 and float(stats.correct) == 1
    assert float(stats.loss_sum) == pytest.approx(-np.log(0.7) - np.log(0.1), rel=1e-6)
    assert float(sum_aux_losses({"losses": {"a": {"aux_loss": (jnp.float32(0.5),)},
                                            "b": {"aux_loss": (jnp.float32(0.25),)}}})) == 0.75
    assert float(sum_aux_losses({})) == 0.0


def test_macro_accuracy_by_hand():
    """Macro accuracy as torchmetrics' MulticlassAccuracy(average="macro", ignore_index=-100)."""
    # 5 classes. Targets: class 0 x3, class 1 x2, class 2 x1; class 3 only predicted; class 4
    # neither (left out). One ignored position whose (wrong) prediction must not count.
    targets = jnp.array([[0, 0, 0, 1, 1, 2, -100]])
    preds = jnp.array([[0, 0, 3, 1, 0, 2, 4]])
    logits = jax.nn.one_hot(preds, 5)
    stats = class_stats(logits, targets)
    np.testing.assert_array_equal(stats.hits, [2, 1, 1, 0, 0])
    np.testing.assert_array_equal(stats.targets, [3, 2, 1, 0, 0])
    np.testing.assert_array_equal(stats.predictions, [3, 1, 1, 1, 0])
    # Recall per present class: 0: 2/3, 1: 1/2, 2: 1/1, 3: 0 (predicted only); class 4 absent.
    expected = (2 / 3 + 1 / 2 + 1 + 0) / 4
    assert float(macro_accuracy(*stats)) == pytest.approx(expected, rel=1e-6)
    assert float(macro_accuracy(*(np.asarray(x) for x in stats))) == pytest.approx(expected)
    # Micro accuracy over the same positions is different: 4 of 6.
    assert float(token_stats(logits, targets).correct) == 4


def test_macro_accuracy_matches_recall_arithmetic_on_random_data():
    """sklearn's recall_score(average="macro", labels=present) written out, on random batches
    accumulated across two calls (the metric is global over the test set, not per batch)."""
    rng = np.random.default_rng(0)
    v = 7
    targets = rng.integers(0, v - 1, size=(2, 4, 9))          # class 6 never a target
    targets[rng.random(targets.shape) < 0.3] = -100
    logits = rng.normal(size=(2, 4, 9, v)).astype(np.float32)
    total = None
    for b in range(2):
        stats = class_stats(jnp.asarray(logits[b]), jnp.asarray(targets[b]))
        total = stats if total is None else type(stats)(*(a + c for a, c in zip(total, stats)))
    y_true = targets.ravel()
    y_pred = logits.argmax(-1).ravel()[y_true != -100]
    y_true = y_true[y_true != -100]
    labels = sorted(set(y_true) | set(y_pred))
    recalls = [np.mean(y_pred[y_true == c] == c) if np.any(y_true == c) else 0.0 for c in labels]
    assert float(macro_accuracy(*total)) == pytest.approx(np.mean(recalls), rel=1e-6)
    assert float(macro_accuracy(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3))) == 0.0


def test_train_step_adds_sown_aux_loss():
    model = TinyLM(aux_weight=0.5)
    tx = training.make_optimizer()
    params = training.init_params(model, jax.random.key(0), jnp.asarray(TRAIN[0][:1]))
    state = training.init_train_state(params, tx, learning_rate=1e-3, weight_decay=0.0,
                                      total_steps=10, rng=jax.random.key_data(jax.random.key(1)))
    step = jax.jit(training.make_train_step(model, tx))
    batch = {"inputs": jnp.asarray(TRAIN[0][:4]), "targets": jnp.asarray(TRAIN[1][:4])}
    new_state, m = step(state, batch)
    assert float(m["aux_loss"]) > 0
    assert float(m["loss"]) == pytest.approx(float(m["cross_entropy"] + m["aux_loss"]), rel=1e-6)
    assert int(new_state.step) == 1 and float(m["learning_rate"]) == pytest.approx(1e-3)


# --- the vmapped grid ---

def test_vmapped_grid_equals_six_sequential_runs(grid_vmapped):
    sequential = fit({"grid": training.DEFAULT_GRID, "vmap": False})
    assert len(grid_vmapped) == len(sequential) == 6
    for v, s in zip(grid_vmapped, sequential):
        assert (v["learning_rate"], v["weight_decay"]) == (s["learning_rate"], s["weight_decay"])
        lv, ls = np.array(v["loss_curve"]), np.array(s["loss_curve"])
        assert lv.shape == ls.shape == (12, 2)
        np.testing.assert_allclose(lv, ls, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.array(v["eval_curve"]), np.array(s["eval_curve"]),
                                   rtol=1e-5, atol=1e-6)
    # The grid is not degenerate: learning rates give different curves.
    assert grid_vmapped[0]["final_train_loss"] != grid_vmapped[-1]["final_train_loss"]
    assert grid_vmapped[-1]["final_train_loss"] < grid_vmapped[-1]["loss_curve"][0][1]


def test_same_seed_same_curve(grid_vmapped):
    again = fit({"grid": training.DEFAULT_GRID})
    for a, b in zip(grid_vmapped, again):
        assert a["loss_curve"] == b["loss_curve"] and a["eval_curve"] == b["eval_curve"]


# Tests below use 6-run grids so that they reuse the fixture's compiled program.

def test_nonfinite_run_stops_others_continue():
    grid = training.DEFAULT_GRID[:5] + ((1e30, 0.0),)  # diverges to non-finite within steps
    *oks, bad = fit({"grid": grid, "train_steps": 6})
    for ok in oks:
        assert ok["status"] == "ok" and ok["steps"] == 6 and np.isfinite(ok["final_test_acc"])
    assert bad["status"] == "failed" and "non-finite" in bad["error"]
    assert bad["steps"] < 6 and np.isnan(bad["final_test_acc"])


def test_stop_accuracy_freezes_run():
    for res in fit({"grid": training.DEFAULT_GRID, "stop_accuracy": 0.0, "train_steps": 12}):
        assert res["steps"] == 4 and len(res["eval_curve"]) == 1  # first evaluation: step 4
        assert res["final_test_acc"] == res["eval_curve"][0][1]


# --- the seed axis, the schedule, precision, held-out selection ---

def test_seed_axis_trains_each_seed_as_if_alone():
    """Seeds train in the same program as the (lr, wd) grid; each seed's run equals that seed
    trained alone (same data order: the config's seed)."""
    base = {"grid": ((1e-3, 0.1), (5e-4, 0.0)), "train_steps": 6}
    together = fit(dict(base, seeds=(0, 1, 2)))
    assert [(r["learning_rate"], r["seed"]) for r in together] == [
        (1e-3, 0), (1e-3, 1), (1e-3, 2), (5e-4, 0), (5e-4, 1), (5e-4, 2)]
    assert together[0]["run"] == "lr=0.001,wd=0.1,seed=0"
    for seed in (1, 2):
        alone = fit(dict(base, seeds=(seed,)))
        for r_alone, r_together in zip(alone, [r for r in together if r["seed"] == seed]):
            np.testing.assert_allclose(np.array(r_alone["loss_curve"]),
                                       np.array(r_together["loss_curve"]), rtol=1e-5, atol=1e-6)
    # Seeds start from different parameters, so their curves differ.
    assert together[0]["loss_curve"][0] != together[1]["loss_curve"][0]
    with pytest.raises(ValueError, match="seeds must be distinct"):
        TrainConfig.from_any({"seeds": (1, 1)})


def test_per_epoch_schedule_holds_the_rate_for_an_epoch(tmp_path):
    """16 steps of 8 per epoch: torch's CosineAnnealingLR(T_max=2) stepped per epoch."""
    out = str(tmp_path / "run")
    fit({"grid": ((1e-3, 0.0),), "train_steps": 16, "schedule": "per-epoch",
         "checkpoint_every_steps": None}, out_dir=out)
    records = training.read_metrics(os.path.join(out, "lr=0.001,wd=0", "metrics.jsonl"))
    rates = [r["train/learning_rate"] for r in records if "train/learning_rate" in r]
    epoch_rates = [1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + np.cos(np.pi * e / 2)) for e in range(2)]
    np.testing.assert_allclose(rates, np.repeat(epoch_rates, 8), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        TrainConfig.from_any({"schedule": "cosine"})


def test_bfloat16_precision_trains_with_float32_parameters():
    from mad_jax.training.precision import compute_model

    runs = fit({"grid": ((1e-3, 0.0),), "train_steps": 6, "precision": "bfloat16"})
    f32 = fit({"grid": ((1e-3, 0.0),), "train_steps": 6})
    loss_bf16, loss_f32 = np.array(runs[0]["loss_curve"]), np.array(f32[0]["loss_curve"])
    assert np.isfinite(loss_bf16).all()
    # bf16 keeps 8 mantissa bits: the curves agree to ~1e-2, and are not identical.
    np.testing.assert_allclose(loss_bf16[:, 1], loss_f32[:, 1], rtol=3e-2)
    assert not np.array_equal(loss_bf16, loss_f32)
    # A model with a dtype field is cloned with bf16 compute; one without gets bf16 params.
    from mad_jax import models
    lm = models.build(["swiglu"], vocab_size=VOCAB, max_length=LENGTH, dim=DIM)
    cloned, cast = compute_model(lm, "bfloat16")
    assert cloned.dtype == jnp.bfloat16 and cloned.param_dtype == jnp.float32 and cast is None
    assert compute_model(MODEL, "bfloat16") == (MODEL, jnp.bfloat16)
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        TrainConfig.from_any({"precision": "fp16"})


def test_select_on_validation_stops_on_the_held_out_split():
    val = copy_data(40, 2)
    runs = fit({"grid": ((1e-3, 0.0),), "select_on": "validation", "stop_accuracy": 0.0},
               validation_data=val)
    r = runs[0]
    assert r["steps"] == 4 and len(r["val_curve"]) == 1 and len(r["eval_curve"]) == 1
    assert r["final_val_acc"] == r["val_curve"][0][1] and np.isfinite(r["final_val_acc_micro"])
    with pytest.raises(ValueError, match="select_on='validation' needs validation_data"):
        fit({"select_on": "validation"})


# --- checkpoints, resume, metrics files ---

class Interrupt(Exception):
    pass


def interrupt_at(step):
    def on_log(info):
        if info["step"] == step:
            raise Interrupt
    return on_log


def _strip(results):
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "compile_time_s")}
            for r in results]


def test_kill_and_resume_gives_the_same_result(tmp_path, grid_vmapped):
    grid = {"grid": training.DEFAULT_GRID}
    out = str(tmp_path / "run")
    with pytest.raises(Interrupt):
        fit(grid, out_dir=out, on_log=interrupt_at(8))  # last checkpoint at step 5
    assert os.path.isdir(os.path.join(out, "checkpoints", "5"))
    messages = []
    resumed = fit(grid, out_dir=out, log=messages.append)
    assert any("resuming from step 5/12" in m for m in messages)
    assert _strip(resumed) == _strip(grid_vmapped)
    assert not os.path.exists(os.path.join(out, "checkpoints"))  # removed once finished
    records = training.read_metrics(os.path.join(out, "lr=0.001,wd=0.1", "metrics.jsonl"))
    train_steps = [r["step"] for r in records if "train/loss" in r]
    assert train_steps == list(range(1, 13))  # steps 6-8 of the killed session were dropped
    assert [r["step"] for r in records if "test/accuracy" in r] == [4, 8, 12]


def test_corrupt_checkpoint_is_named_and_run_starts_over(tmp_path, grid_vmapped):
    grid = {"grid": training.DEFAULT_GRID}
    out = str(tmp_path / "run")
    with pytest.raises(Interrupt):
        fit(grid, out_dir=out, on_log=interrupt_at(6))
    step_dir = os.path.join(out, "checkpoints", "5")
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    messages = []
    again = fit(grid, out_dir=out, log=messages.append)
    assert any("corrupt checkpoint" in m and step_dir in m and "starting this run over" in m
               for m in messages), messages
    assert _strip(again) == _strip(grid_vmapped)


def test_checkpoint_from_other_config_is_not_used(tmp_path):
    out = str(tmp_path / "run")
    grid = training.DEFAULT_GRID
    with pytest.raises(Interrupt):
        fit({"grid": grid}, out_dir=out, on_log=interrupt_at(6))
    messages = []
    fit({"grid": grid[::-1]}, out_dir=out, log=messages.append)
    assert any("another config" in m for m in messages)


def test_checkpoint_of_an_older_state_layout_restarts_the_run(tmp_path, grid_vmapped):
    """A checkpoint written before the state layout changed (no `state_format` in its record)
    is not restored: one line says the run restarts, and it trains to the same result."""
    out = str(tmp_path / "run")
    old = training.Checkpointer(os.path.join(out, "checkpoints"))
    old.save(5, {"params": np.zeros(3, np.float32)}, {"step": 5, "fingerprint": {"seed": 0}})
    old.close()
    messages = []
    again = fit({"grid": training.DEFAULT_GRID}, out_dir=out, log=messages.append)
    assert any("older mad_jax" in m and "restarts from step 0" in m for m in messages), messages
    assert _strip(again) == _strip(grid_vmapped)


def test_tensorboard_events_written(tmp_path):
    out = str(tmp_path / "run")
    fit({"grid": training.DEFAULT_GRID, "train_steps": 4}, out_dir=out)
    run_dir = os.path.join(out, "lr=0.0005,wd=0")
    (events_file,) = [f for f in os.listdir(run_dir) if f.startswith("events.out.tfevents")]
    events = training.tensorboard.read_events(os.path.join(run_dir, events_file))
    assert events[0]["file_version"] == "brain.Event:2"
    losses = [(e["step"], e["scalars"]["train/loss"]) for e in events
              if "train/loss" in e["scalars"]]
    jsonl = training.read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    assert losses == [(r["step"], pytest.approx(r["train/loss"], rel=1e-6)) for r in jsonl
                      if "train/loss" in r]
    assert json.loads(json.dumps(jsonl))  # plain JSON lines


def test_packed_settings_train_as_if_each_ran_alone():
    """Two settings whose training sets differ in size (different epochs, per-epoch schedule,
    eval points and budgets) in one program equal each trained on its own; one run stops
    early on the stopping accuracy, the others train to their own ends."""
    small = (TRAIN[0][:64], TRAIN[1][:64])
    cfg = {"batch_size": 16, "train_epochs": 3, "eval_every_epochs": 1, "log_every_steps": 3,
           "schedule": "per-epoch", "grid": ((1e-3, 0.0), (3e-3, 0.1)), "stop_accuracy": 0.15}
    packed = training.fit_packed(MODEL, [{"train": TRAIN, "test": TEST},
                                         {"train": small, "test": TEST}], cfg,
                                 log=lambda s: None)
    for data, got in zip((TRAIN, small), packed):
        alone = training.fit(MODEL, data, TEST, cfg, log=lambda s: None)
        assert [r["total_steps"] for r in got] == [r["total_steps"] for r in alone]
        for g, a in zip(got, alone):
            assert (g["steps"], g["best_step"], g["status"]) == (a["steps"], a["best_step"],
                                                                 a["status"])
            np.testing.assert_allclose(np.asarray(g["eval_curve"], float),
                                       np.asarray(a["eval_curve"], float), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(np.asarray(g["loss_curve"], float),
                                       np.asarray(a["loss_curve"], float), rtol=1e-5)
            assert g["final_test_acc"] == pytest.approx(a["final_test_acc"], abs=1e-6)
    assert [r["total_steps"] for r in packed[0]] == [24, 24]
    assert [r["total_steps"] for r in packed[1]] == [12, 12]
    # the larger setting's second run reaches 0.15 at its second epoch and stops there
    assert [[r["steps"] for r in rs] for rs in packed] == [[24, 16], [12, 12]]


def test_packing_refuses_settings_of_other_shapes():
    short = (TRAIN[0][:, :8], TRAIN[1][:, :8])
    with pytest.raises(ValueError, match="share their sequence length"):
        training.fit_packed(MODEL, [{"train": TRAIN, "test": TEST},
                                    {"train": short, "test": (TEST[0][:, :8], TEST[1][:, :8])}],
                            {"batch_size": 16, "train_steps": 2}, log=lambda s: None)

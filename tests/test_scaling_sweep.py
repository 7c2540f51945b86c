"""The scaling sweep end to end (smoke preset on a slice of the Python stdlib), pretraining resume,
and one-line errors for bad input."""
import json
import math
import os

import numpy as np
import pytest

from experiments import scaling_sweep
from experiments.configs import scaling as scaling_config
from mad_jax.scaling import isoflop, ladders, pretrain, window_source


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    """Runs the smoke preset once (building its corpus from the stdlib) and returns its workdir."""
    workdir = tmp_path_factory.mktemp("smoke")
    config = scaling_config.get_config("smoke")
    config.workdir = str(workdir)
    assert scaling_sweep.run_from_config(config) == 0
    return workdir


@pytest.mark.slow
def test_smoke_sweep_end_to_end(smoke_dir):
    rows = isoflop.read_results_csv(str(smoke_dir / "results.csv"))
    assert set(rows["family"]) == {"transformer++", "hyena"}
    assert set(rows["budget"]) == {1.5e9, 3e9}
    assert len(rows) == len(list((smoke_dir / "runs").glob("*.json")))
    assert rows["eval_loss"].between(0.5, math.log(257) + 1).all()  # learned something, no NaN
    # Every run stays within its budget and within one step of it.
    assert (rows["flops"] <= rows["budget"]).all()
    step_flops = rows["flops_per_token"] * rows["global_batch"] * rows["seq_len"]
    assert (rows["budget"] - rows["flops"] < step_flops).all()
    for plot in ("isoflop.png", "frontier.png", "state_optimal.png"):
        assert (smoke_dir / "plots" / plot).stat().st_size > 1000
    summary = json.loads((smoke_dir / "summary.json").read_text())
    assert set(summary["frontiers"]) <= {"transformer++", "hyena"}
    assert {f for f, _ in summary["ranking"]["order"]} == {"transformer++", "hyena"}
    assert "## Ranking" in (smoke_dir / "report.md").read_text()
    assert (smoke_dir / "corpus" / "meta.json").exists()


@pytest.mark.slow
def test_smoke_sweep_resumes_without_training(smoke_dir, capsys):
    before = (smoke_dir / "results.csv").read_text()
    config = scaling_config.get_config("smoke")
    config.workdir = str(smoke_dir)
    config.report = False
    assert scaling_sweep.run_from_config(config) == 0
    out = capsys.readouterr().out
    assert "training" not in out
    assert out.count("done earlier") == len(before.strip().splitlines()) - 1
    assert (smoke_dir / "results.csv").read_text() == before


def _error_line(capsys, **fields):
    config = scaling_config.get_config("smoke")
    for key, value in fields.items():
        if "." in key:
            outer, inner = key.split(".")
            config[outer][inner] = value
        else:
            config[key] = value
    assert scaling_sweep.run_from_config(config) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.mark.slow
def test_bad_input_errors(smoke_dir, tmp_path, capsys):
    corpus = str(smoke_dir / "corpus")
    line = _error_line(capsys, workdir=str(tmp_path / "a"), families="transformer++,gpt",
                       **{"corpus.path": corpus})
    assert "unknown architecture family 'gpt'" in line
    line = _error_line(capsys, workdir=str(tmp_path / "b"), budgets="1e3",
                       **{"corpus.path": corpus})
    assert "budget 1e+03 FLOPs is too small for the smallest transformer++ model" in line
    line = _error_line(capsys, workdir=str(tmp_path / "c"),
                       **{"corpus.path": str(tmp_path / "none"), "corpus.inputs": ""})
    assert "missing corpus: no token store at" in line
    line = _error_line(capsys, workdir=str(tmp_path / "d"), preset="huge")
    assert "unknown scaling preset 'huge'" in line
    assert not os.path.exists(tmp_path / "a" / "results.csv")


def test_config_argument_forms():
    config = scaling_config.get_config("preset=smoke,seq_len=64")
    resolved = scaling_config.resolve(config)
    assert resolved.seq_len == 64 and resolved.families == "transformer++,hyena"
    assert resolved.workdir == "workdir/scaling/smoke"
    cpu = scaling_config.resolve(scaling_config.get_config())
    assert cpu.preset == "cpu"
    assert len(cpu.families.split(",")) >= 3 and len(cpu.budgets.split(",")) >= 3
    with pytest.raises(ValueError, match="unknown config field"):
        scaling_config.get_config("nope=1")


def test_pretrain_resumes_from_checkpoint(tmp_path):
    tokens = (np.arange(20_000) * 7 % 251).astype(np.int32)
    ev = window_source.eval_windows(tokens, seq_len=16, num_windows=8)
    model = ladders.rung("transformer++", 3e4, vocab_size=257, spec="smoke").build(16)
    config = pretrain.PretrainConfig(seq_len=16, global_batch=8, total_steps=12, eval_batch=8,
                                     checkpoint_every_steps=4, log_every_steps=0)
    full = pretrain.pretrain(model, tokens, ev, config, log=None)
    ckpt = str(tmp_path / "ckpt")
    cut = pretrain.pretrain(model, tokens, ev, config, log=None, checkpoint_dir=ckpt,
                            stop_at_step=6)
    assert not cut["completed"] and cut["steps"] == 6 and os.path.isdir(ckpt)
    lines = []
    resumed = pretrain.pretrain(model, tokens, ev, config, log=lines.append, checkpoint_dir=ckpt)
    assert any("resumed from step 6" in line for line in lines)
    assert resumed["completed"] and resumed["steps"] == 12
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], abs=1e-5)
    assert not os.path.exists(ckpt)  # a finished run's checkpoints are removed


def test_warmup_cosine_schedule():
    lr = [float(pretrain.warmup_cosine(s, warmup_steps=10, total_steps=110, peak=1.0, floor=0.1))
          for s in (0, 4, 9, 10, 60, 110, 200)]
    assert lr == pytest.approx([0.1, 0.5, 1.0, 1.0, 0.55, 0.1, 0.1])


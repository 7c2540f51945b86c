"""SIGINT / SIGTERM inside `signals.graceful_stop`: the MAD trainer and the pretraining loop stop at
the next step boundary with a checkpoint and raise `Interrupted`; the run resumes from it."""
import os
import signal
import time

import numpy as np
import pytest

from mad_jax import models, training
from mad_jax.scaling import ladders, pretrain, window_source
from mad_jax.training import signals


def _wait_for_request(timeout=5.0):
    deadline = time.time() + timeout
    while signals.stop_requested() is None and time.time() < deadline:
        time.sleep(0.01)
    return signals.stop_requested()


def test_signal_is_recorded_not_raised_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with signals.graceful_stop(log=lambda s: None):
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for_request() == signal.SIGTERM  # the process is still here
        assert signals.take_up() == signal.SIGTERM
    assert signals.stop_requested() is None and signal.getsignal(signal.SIGTERM) == before
    assert signals.Interrupted(signal.SIGINT).exit_status == 130
    assert signals.Interrupted(signal.SIGTERM, "step 3/8").exit_status == 143


def test_mad_trainer_checkpoints_at_the_next_step_and_resumes(tmp_path):
    x = np.random.default_rng(0).integers(0, 16, (32, 8)).astype(np.int32)
    model = models.build("swiglu", vocab_size=16, max_length=8, dim=16)
    cfg = {"train_steps": 8, "batch_size": 8, "eval_every_steps": 4, "log_every_steps": 1,
           "checkpoint_every_steps": 100, "grid": ((1e-3, 0.0),)}

    def signal_at_step_2(info):
        if info["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for_request()

    with signals.graceful_stop(log=lambda s: None):
        with pytest.raises(signals.Interrupted, match="SIGTERM at step 3/8, checkpoint written"):
            training.fit(model, (x, x), (x, x), cfg, out_dir=str(tmp_path), log=lambda s: None,
                         on_log=signal_at_step_2)
    assert os.path.isdir(tmp_path / "checkpoints" / "3")
    lines = []
    (run,) = training.fit(model, (x, x), (x, x), cfg, out_dir=str(tmp_path), log=lines.append)
    assert any("resuming from step 3/8" in line for line in lines)
    assert run["status"] == "ok" and run["steps"] == 8


def test_pretraining_checkpoints_at_the_next_step(tmp_path):
    tokens = (np.arange(20_000) * 7 % 251).astype(np.int32)
    ev = window_source.eval_windows(tokens, seq_len=16, num_windows=8)
    model = ladders.rung("transformer++", 3e4, vocab_size=257, spec="smoke").build(16)
    config = pretrain.PretrainConfig(seq_len=16, global_batch=8, total_steps=12, eval_batch=8,
                                     checkpoint_every_steps=100, log_every_steps=1)
    sent = []

    def log(line):
        if not sent:
            sent.append(line)
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for_request()

    ckpt = str(tmp_path / "ckpt")
    with signals.graceful_stop(log=lambda s: None):
        with pytest.raises(signals.Interrupted, match="SIGINT at step .*checkpoint written"):
            pretrain.pretrain(model, tokens, ev, config, log=log, checkpoint_dir=ckpt)
    lines = []
    resumed = pretrain.pretrain(model, tokens, ev, config, log=lines.append, checkpoint_dir=ckpt)
    assert any("resumed from step" in line for line in lines)
    assert resumed["completed"] and resumed["steps"] == 12

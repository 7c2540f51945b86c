"""The MAD trainer on a mesh (8 simulated CPU devices): a vmapped grid spread over the sweep axis,
parameters sharded FSDP-style, the same results as on one device, resume onto another mesh, and
one-line errors for meshes that do not fit the grid or the batch."""
import os

import jax
import numpy as np
import pytest

from mad_jax import models, training
from tiny_runs import copy_data

VOCAB, LENGTH = 16, 16
BASE = dict(batch_size=16, train_steps=10, eval_every_steps=5, log_every_steps=1,
            checkpoint_every_steps=4, stop_accuracy=None, tensorboard=False,
            grid=training.DEFAULT_GRID)


TRAIN = copy_data(128, 0, vocab_size=VOCAB, length=LENGTH)
TEST = copy_data(32, 1, vocab_size=VOCAB, length=LENGTH)
MODEL = models.build("hyena swiglu", vocab_size=VOCAB, max_length=LENGTH - 1, dim=32)


def _fit(**config):
    return training.fit(MODEL, TRAIN, TEST, dict(BASE, **config), log=lambda s: None)


def _curves(results):
    return ([np.asarray(r["loss_curve"]) for r in results],
            [np.asarray(r["eval_curve"]) for r in results])


@pytest.fixture(scope="module")
def one_device():
    return _fit()


def _assert_same_runs(results, reference):
    (losses, evals), (ref_losses, ref_evals) = _curves(results), _curves(reference)
    for got, want in zip(losses + evals, ref_losses + ref_evals):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    assert [r["run"] for r in results] == [r["run"] for r in reference]


@pytest.mark.parametrize("mesh", ["auto", "sweep:2,fsdp:4"])
def test_grid_on_a_mesh_matches_one_device(mesh, one_device):
    assert jax.device_count() == 8
    _assert_same_runs(_fit(mesh=mesh), one_device)


def test_resume_onto_another_mesh(tmp_path, one_device):
    out = str(tmp_path / "run")

    def stop_at_7(info):
        if info["step"] == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        training.fit(MODEL, TRAIN, TEST, dict(BASE, mesh="sweep:2,data:4"), out_dir=out,
                     on_log=stop_at_7, log=lambda s: None)
    assert os.path.isdir(os.path.join(out, "checkpoints", "4"))
    messages = []
    resumed = training.fit(MODEL, TRAIN, TEST, dict(BASE, mesh="sweep:1,fsdp:8"), out_dir=out,
                           log=messages.append)
    assert any("resuming from step 4/10" in m for m in messages)
    _assert_same_runs(resumed, one_device)


def test_mesh_that_does_not_fit_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"sweep axis \(4\) does not divide the 6 runs.*"
                                         r"'sweep:2,data:-1'"):
        _fit(mesh="sweep:4,data:2")
    with pytest.raises(ValueError, match="batch_size 12 does not divide over the mesh's data x "
                                         "fsdp axes"):
        _fit(mesh="data:8", batch_size=12)
    with pytest.raises(ValueError, match="unknown mesh axes"):
        _fit(mesh="dta:8")

"""Every layer of the zoo trains sharded (data x fsdp x tensor = 2 x 2 x 2) as on one device.

Each layer, at its default (width-128) config, in a [layer, mlp] model: 3 AdamW steps on 8
simulated devices against one device. About 20 compilations, a few minutes on two cores, so it is
opt-in: `MAD_JAX_ZOO=1 python -m pytest tests/test_sharding_zoo.py`.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mad_jax
from mad_jax import sharding, training

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not os.environ.get("MAD_JAX_ZOO"), reason="opt-in (MAD_JAX_ZOO=1): compiles every layer twice")]

MESH, VOCAB, LENGTH, BATCH, STEPS = "data:2,fsdp:2,tensor:2", 16, 16, 8, 3


def _losses(layer: str, mesh: str) -> np.ndarray:
    model = mad_jax.models.build([layer, "mlp"], vocab_size=VOCAB, max_length=LENGTH, dim=128)
    tx = training.make_optimizer()
    sample = jnp.zeros((1, LENGTH), jnp.int32)

    create = training.make_create_state(model, tx, sample, learning_rate=1e-3, weight_decay=0.1,
                                        total_steps=100)

    size = int(np.prod(list(sharding.parse_mesh(mesh).values())))
    part = sharding.Partitioner.create(mesh, devices=jax.devices()[:size])
    specs = sharding.param_specs(model, sample)
    state, state_sh = part.init(create, jax.random.key(0), params_specs=specs)
    rng = np.random.default_rng(0)
    batches = [{k: rng.integers(0, VOCAB, (BATCH, LENGTH)).astype(np.int32)
                for k in ("inputs", "targets")} for _ in range(STEPS)]
    batch_sh = part.batch_shardings(batches[0])
    step = part.train_step(training.make_train_step(model, tx), state_sh, batch_sh)
    losses = []
    for batch in batches:
        state, metrics = step(state, part.shard_batch(batch, batch_sh))
        losses.append(float(metrics["loss"]))
    return np.asarray(losses)


# x + sigmoid(x W_r) * (relu(x W_k)^2 W_v) hits an XLA partitioner bug on the 2x2x2 mesh (see
# test_sharding.py::test_known_xla_bug_residual_gated_matmuls_on_a_2x2x2_mesh); strict, so a
# fix shows.
_XLA_BUG = pytest.mark.xfail(strict=True, reason="XLA SPMD miscompile on a 2x2x2 mesh")
_CASES = [pytest.param(name, marks=_XLA_BUG) if name.endswith("channel-mixer") and "rwkv" in name
          else name for name in sorted(mad_jax.layers.LAYERS)]


@pytest.mark.parametrize("layer", _CASES)
def test_layer_trains_sharded_like_one_device(layer):
    np.testing.assert_allclose(_losses(layer, MESH), _losses(layer, "data:1"), rtol=1e-5)

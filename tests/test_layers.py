"""Contract checks run on every registered layer: shape, causality, finite gradients, accounting."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import layers

DIM = 128
SEQ_LEN = 16
BATCH = 2
ALL_LAYERS = (
    "attention", "mh-attention", "sliding-attention", "mh-sliding-attention",
    "linear-attention", "mh-linear-attention", "gated-linear-attention",
    "mh-gated-linear-attention", "hyena", "mh-hyena", "hyena-experts", "mamba",
    "rwkv5-time-mixer", "rwkv5-channel-mixer", "rwkv6-time-mixer", "rwkv6-channel-mixer",
    "mlp", "swiglu", "moe-mlp", "moe-mlp-paper",
)


def _init_and_apply(name):
    layer = layers.make_layer(name)
    x = jax.random.normal(jax.random.key(0), (BATCH, SEQ_LEN, DIM), jnp.float32)
    params = layer.init(jax.random.key(1), x)["params"]

    @jax.jit
    def apply(params, x):
        y, _ = layer.apply({"params": params}, x, mutable=["losses"])
        return y

    return layer, params, x, apply


def test_every_design_layer_is_registered():
    missing = [n for n in ALL_LAYERS if n not in layers.LAYERS]
    assert not missing, f"layers not registered: {missing}"


@pytest.mark.parametrize("name", ALL_LAYERS)
def test_layer_contract(name):
    if name not in layers.LAYERS:
        pytest.fail(f"{name} is not registered")
    layer, params, x, apply = _init_and_apply(name)
    y = apply(params, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y)))

    # Causality: changing inputs after position t leaves outputs at positions <= t unchanged.
    for t in (0, SEQ_LEN // 2):
        noise = jax.random.normal(jax.random.key(7 + t), x[:, t + 1:].shape)
        y_changed = apply(params, x.at[:, t + 1:].set(noise))
        np.testing.assert_allclose(np.asarray(y_changed[:, : t + 1]), np.asarray(y[:, : t + 1]),
                                   atol=1e-5, rtol=1e-5, err_msg=f"{name} is not causal at t={t}")
    if name not in ("mlp", "swiglu", "moe-mlp", "moe-mlp-paper", "rwkv5-channel-mixer",
                    "rwkv6-channel-mixer"):
        # A sequence mixer must actually mix: the last output depends on the first input.
        y_first = apply(params, x.at[:, 0].set(x[:, 0] + 1.0))
        assert not np.allclose(np.asarray(y_first[:, -1]), np.asarray(y[:, -1]), atol=1e-6), \
            f"{name}: last output does not depend on the first token"

    # Gradients with respect to params and inputs are finite and not all zero.
    def loss(params, x):
        return jnp.mean(apply(params, x) ** 2)

    g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, x)
    leaves = jax.tree_util.tree_leaves(g_params)
    assert leaves and all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert any(np.any(np.asarray(g) != 0) for g in leaves)
    assert np.all(np.isfinite(np.asarray(g_x))) and np.any(np.asarray(g_x) != 0)

    # Accounting: positive integers, growing with sequence length for sequence mixers' FLOPs.
    flops_1k = layer.flops(dim=DIM, seq_len=1024)
    state_1k = layer.state_size(dim=DIM, seq_len=1024)
    assert isinstance(flops_1k, int) and flops_1k > 0
    assert isinstance(state_1k, int) and state_1k >= 0
    assert layer.flops(dim=DIM, seq_len=2048) > flops_1k

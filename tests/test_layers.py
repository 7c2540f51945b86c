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
    "deltanet", "gated-deltanet", "rwkv7-time-mixer",
    "mamba2", "mlstm",
    "rg-lru", "based",
)


def _init_and_apply(name):
    layer = layers.make_layer(name)
    x = jax.random.normal(jax.random.key(0), (BATCH, SEQ_LEN, DIM), jnp.float32)
    params = jax.jit(layer.init)(jax.random.key(1), x)["params"]

    def apply_one(params, x):
        y, _ = layer.apply({"params": params}, x, mutable=["losses"])
        return y

    # Every forward the contract needs runs as one compiled program over stacked inputs.
    apply_many = jax.jit(jax.vmap(apply_one, in_axes=(None, 0)))
    return layer, params, x, apply_one, apply_many


def test_every_design_layer_is_registered():
    missing = [n for n in ALL_LAYERS if n not in layers.LAYERS]
    assert not missing, f"layers not registered: {missing}"


@pytest.mark.parametrize("name", ALL_LAYERS)
def test_layer_contract(name):
    if name not in layers.LAYERS:
        pytest.fail(f"{name} is not registered")
    layer, params, x, apply_one, apply_many = _init_and_apply(name)
    # Causality: changing inputs after position t leaves outputs at positions <= t unchanged.
    # A sequence mixer must also mix: the last output depends on the first input.
    cuts = (0, SEQ_LEN // 2)
    variants = [x]
    for t in cuts:
        noise = jax.random.normal(jax.random.key(7 + t), x[:, t + 1:].shape)
        variants.append(x.at[:, t + 1:].set(noise))
    variants.append(x.at[:, 0].set(x[:, 0] + 1.0))
    ys = apply_many(params, jnp.stack(variants))
    y = ys[0]
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y)))
    for t, y_changed in zip(cuts, ys[1:1 + len(cuts)]):
        np.testing.assert_allclose(np.asarray(y_changed[:, : t + 1]), np.asarray(y[:, : t + 1]),
                                   atol=1e-5, rtol=1e-5, err_msg=f"{name} is not causal at t={t}")
    if name not in ("mlp", "swiglu", "moe-mlp", "moe-mlp-paper", "rwkv5-channel-mixer",
                    "rwkv6-channel-mixer"):
        y_first = ys[-1]
        assert not np.allclose(np.asarray(y_first[:, -1]), np.asarray(y[:, -1]), atol=1e-6), \
            f"{name}: last output does not depend on the first token"

    # Gradients with respect to params and inputs are finite and not all zero.
    def loss(params, x):
        return jnp.mean(apply_one(params, x) ** 2)

    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
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

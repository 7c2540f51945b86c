"""Layer-specific checks of `mlp`, `swiglu` and `moe-mlp`: sizes, math, init, routing, aux loss."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import layers
from mad_jax.layers.accounting import dense_flops
from mad_jax.layers.moe import load_balancing_loss


def _init(layer, dim=32, seq_len=5, batch=2, seed=0):
    x = jax.random.normal(jax.random.key(seed), (batch, seq_len, dim), jnp.float32)
    params = nn.meta.unbox(layer.init(jax.random.key(seed + 1), x)["params"])
    return params, x


def _count(layer, dim):
    """Number of parameters, from shapes only (no computation)."""
    x = jax.ShapeDtypeStruct((1, 4, dim), jnp.float32)
    shapes = nn.meta.unbox(jax.eval_shape(layer.init, jax.random.key(0), x)["params"])
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(shapes))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _silu(x):
    return x / (1 + np.exp(-x))


@pytest.mark.parametrize("dim,hidden,use_bias,expected", [
    (128, None, False, 2 * 128 * 512),            # the MAD default: inner width 4 * D
    (32, 48, False, 2 * 32 * 48),
    (32, 48, True, 2 * 32 * 48 + 48 + 32),
])
def test_mlp_param_count(dim, hidden, use_bias, expected):
    assert _count(layers.make_layer("mlp", hidden_dim=hidden, use_bias=use_bias), dim) == expected


def test_mlp_matches_formula():
    layer = layers.make_layer("mlp")
    params, x = _init(layer)
    y = np.asarray(layer.apply({"params": params}, x))
    x = np.asarray(x, np.float64)
    w1, w2 = (np.asarray(params[n]["kernel"], np.float64) for n in ("fc", "proj"))
    np.testing.assert_allclose(y, _gelu_tanh(x @ w1) @ w2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim,inner", [(128, 352), (96, 256), (100, 272), (48, 128)])
def test_swiglu_inner_width_rounds_up_to_multiple_of_16(dim, inner):
    # int(8 * D / 3) rounded up to a multiple of 16, as the reference's GLU does.
    layer = layers.make_layer("swiglu")
    assert layer.inner_dim(dim) == inner
    assert _count(layer, dim) == 3 * dim * inner


def test_swiglu_matches_formula():
    layer = layers.make_layer("swiglu", hidden_dim=24)
    params, x = _init(layer)
    y = np.asarray(layer.apply({"params": params}, x))
    x = np.asarray(x, np.float64)
    w1, w2, w3 = (np.asarray(params[n]["kernel"], np.float64) for n in ("w1", "w2", "w3"))
    np.testing.assert_allclose(y, (_silu(x @ w1) * (x @ w2)) @ w3, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kernel", [("mlp", "fc"), ("mlp", "proj"), ("swiglu", "w3")])
def test_dense_init_is_pytorch_default(name, kernel):
    params, _ = _init(layers.make_layer(name), dim=64)
    w = np.asarray(params[kernel]["kernel"])
    bound = 1 / np.sqrt(w.shape[0])
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound


def test_mlp_accounting():
    layer = layers.make_layer("mlp")
    assert layer.flops(dim=128, seq_len=10) == 2 * dense_flops(10, 128, 512) + 10 * 512
    assert layer.state_size(dim=128, seq_len=10) == 0
    swiglu = layers.make_layer("swiglu")
    assert swiglu.flops(dim=128, seq_len=10) == 3 * dense_flops(10, 128, 352) + 2 * 10 * 352
    assert swiglu.state_size(dim=128, seq_len=10) == 0


# ---- moe-mlp ----

@pytest.mark.parametrize("dim,experts,active,width", [(128, 8, 2, 16), (32, 4, 1, 8)])
def test_moe_param_count(dim, experts, active, width):
    layer = layers.make_layer("moe-mlp", num_experts=experts, active_experts=active,
                              expert_dim=width)
    # Per expert: up [D, F], gate [D, F], down [F, D]; router [D, E] plus its bias [E].
    assert _count(layer, dim) == experts * 3 * dim * width + dim * experts + experts


def _moe_apply(layer, params, x):
    return layer.apply({"params": params}, x, mutable=["losses", "intermediates"])


def test_moe_routes_each_token_to_exactly_k_experts():
    layer = layers.make_layer("moe-mlp")
    params, x = _init(layer, dim=128, seq_len=8)
    _, state = _moe_apply(layer, params, x)
    (weights,) = state["intermediates"]["routing_weights"]
    weights = np.asarray(weights)
    assert weights.shape == (2, 8, 8)
    assert np.all(np.count_nonzero(weights, axis=-1) == 2)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    assert np.all(weights >= 0)

    # The weights are the two largest router probabilities, renormalised.
    logits = np.asarray(x, np.float64) @ np.asarray(params["router_kernel"], np.float64)
    logits += np.asarray(params["router_bias"])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top2 = np.argsort(-probs, axis=-1)[..., :2]
    expected = np.zeros_like(probs)
    chosen = np.take_along_axis(probs, top2, -1)
    np.put_along_axis(expected, top2, chosen / chosen.sum(-1, keepdims=True), -1)
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)


def test_moe_output_is_sparse_mixture_of_gated_experts():
    layer = layers.make_layer("moe-mlp", num_experts=4, active_experts=2, expert_dim=8)
    params, x = _init(layer, dim=32, seq_len=6)
    y, state = _moe_apply(layer, params, x)
    (weights,) = state["intermediates"]["routing_weights"]
    x64 = np.asarray(x, np.float64)
    weights = np.asarray(weights, np.float64)
    up, gate, down = (np.asarray(params[n], np.float64) for n in ("w_up", "w_gate", "w_down"))
    expected = np.zeros_like(x64)
    for b in range(x64.shape[0]):
        for t in range(x64.shape[1]):
            for e in np.flatnonzero(weights[b, t]):  # only the routed experts
                h = (x64[b, t] @ up[e]) * _gelu_tanh(x64[b, t] @ gate[e])
                expected[b, t] += weights[b, t, e] * (h @ down[e])
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-6)


def test_load_balancing_loss_on_hand_made_routing():
    probs = np.array([[.4, .3, .2, .1], [.5, .3, .1, .1], [.4, .2, .3, .1], [.3, .1, .1, .5]])
    index = np.array([[0, 1], [0, 1], [0, 2], [3, 0]])
    # f = assignments per expert / (T * k) = [4, 2, 1, 1] / 8;
    # P = mean probabilities = [.4, .225, .175, .2].
    f = np.array([4, 2, 1, 1]) / 8
    p = np.array([.4, .225, .175, .2])
    expected = 4 * np.sum(f * p)
    assert expected == pytest.approx(1.2125)
    loss = load_balancing_loss(jnp.asarray(probs), jnp.asarray(index))
    assert float(loss) == pytest.approx(expected)


def test_load_balancing_loss_is_one_when_balanced():
    probs = np.full((8, 4), 0.25)
    index = np.array([[0, 1], [2, 3]] * 4)
    assert float(load_balancing_loss(jnp.asarray(probs), jnp.asarray(index))) == pytest.approx(1.0)


def test_moe_sows_scaled_aux_loss():
    layer = layers.make_layer("moe-mlp", aux_loss_coef=0.5)
    params, x = _init(layer, dim=128, seq_len=8)
    _, state = _moe_apply(layer, params, x)
    (aux,) = state["losses"]["aux_loss"]
    logits = jnp.einsum("bld,de->ble", x, params["router_kernel"]) + params["router_bias"]
    probs = jax.nn.softmax(logits).reshape(-1, 8)
    index = jax.lax.top_k(probs, 2)[1]
    assert float(aux) == pytest.approx(0.5 * float(load_balancing_loss(probs, index)), rel=1e-6)
    assert layers.make_layer("moe-mlp").aux_loss_coef == 0.01

    # The aux loss trains the router.
    def aux_of(p):
        return _moe_apply(layer, p, x)[1]["losses"]["aux_loss"][0]

    g = jax.grad(aux_of)(params)
    assert np.any(np.asarray(g["router_kernel"]) != 0)


def test_moe_flops_count_only_active_experts():
    layer = layers.make_layer("moe-mlp")
    L, D, E, k, F = 10, 128, 8, 2, 16
    expert = 2 * dense_flops(L, D, F) + dense_flops(L, F, D) + 2 * L * F
    expected = dense_flops(L, D, E) + L * E + k * expert + 2 * k * L * D
    assert layer.flops(dim=D, seq_len=L) == expected
    assert layers.make_layer("moe-mlp", active_experts=1).flops(dim=D, seq_len=L) < expected
    assert layer.state_size(dim=D, seq_len=L) == 0


def test_moe_expert_init_uses_per_expert_fan_in():
    params, _ = _init(layers.make_layer("moe-mlp"), dim=128)
    assert np.abs(np.asarray(params["w_up"])).max() <= 1 / np.sqrt(128)
    down = np.abs(np.asarray(params["w_down"])).max()
    assert 0.9 / np.sqrt(16) < down <= 1 / np.sqrt(16)
    np.testing.assert_array_equal(np.asarray(params["router_bias"]), 0.0)

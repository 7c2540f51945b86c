"""Layer-specific checks of `mlp`, `swiglu`, `moe-mlp` and `moe-mlp-paper`: sizes, math, init,
routing, aux loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import layers
from mad_jax.layers.accounting import dense_flops
from mad_jax.layers.moe import load_balancing_loss
from mad_jax.layers.moe_paper import paper_routing_weights

from layer_harness import apply_sown, count_layer_params, init_on_input


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _silu(x):
    return x / (1 + np.exp(-x))


@pytest.mark.parametrize("dim,hidden,use_bias,expected", [
    (128, None, False, 2 * 128 * 512),            # the MAD default: inner width 4 * D
    (32, 48, False, 2 * 32 * 48),
    (32, 48, True, 2 * 32 * 48 + 48 + 32),
])
def test_mlp_paramcount_layer_params(dim, hidden, use_bias, expected):
    layer = layers.make_layer("mlp", hidden_dim=hidden, use_bias=use_bias)
    assert count_layer_params(layer, dim) == expected


def test_mlp_matches_formula():
    layer = layers.make_layer("mlp")
    params, x = init_on_input(layer, (2, 5, 32))
    y = np.asarray(layer.apply({"params": params}, x))
    x = np.asarray(x, np.float64)
    w1, w2 = (np.asarray(params[n]["kernel"], np.float64) for n in ("fc", "proj"))
    np.testing.assert_allclose(y, _gelu_tanh(x @ w1) @ w2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim,inner", [(128, 352), (96, 256), (100, 272), (48, 128)])
def test_swiglu_inner_width_rounds_up_to_multiple_of_16(dim, inner):
    # int(8 * D / 3) rounded up to a multiple of 16, as the reference's GLU does.
    layer = layers.make_layer("swiglu")
    assert layer.inner_dim(dim) == inner
    assert count_layer_params(layer, dim) == 3 * dim * inner


def test_swiglu_matches_formula():
    layer = layers.make_layer("swiglu", hidden_dim=24)
    params, x = init_on_input(layer, (2, 5, 32))
    y = np.asarray(layer.apply({"params": params}, x))
    x = np.asarray(x, np.float64)
    w1, w2, w3 = (np.asarray(params[n]["kernel"], np.float64) for n in ("w1", "w2", "w3"))
    np.testing.assert_allclose(y, (_silu(x @ w1) * (x @ w2)) @ w3, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kernel", [("mlp", "fc"), ("mlp", "proj"), ("swiglu", "w3")])
def test_dense_init_is_pytorch_default(name, kernel):
    params, _ = init_on_input(layers.make_layer(name), (2, 5, 64))
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
def test_moe_paramcount_layer_params(dim, experts, active, width):
    layer = layers.make_layer("moe-mlp", num_experts=experts, active_experts=active,
                              expert_dim=width)
    # Per expert: up [D, F], gate [D, F], down [F, D]; router [D, E] plus its bias [E].
    assert count_layer_params(layer, dim) == experts * 3 * dim * width + dim * experts + experts


def test_moe_routes_each_token_to_exactly_k_experts():
    layer = layers.make_layer("moe-mlp")
    params, x = init_on_input(layer, (2, 8, 128))
    _, state = apply_sown(layer, params, x)
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
    params, x = init_on_input(layer, (2, 6, 32))
    y, state = apply_sown(layer, params, x)
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
    params, x = init_on_input(layer, (2, 8, 128))
    _, state = apply_sown(layer, params, x)
    (aux,) = state["losses"]["aux_loss"]
    logits = jnp.einsum("bld,de->ble", x, params["router_kernel"]) + params["router_bias"]
    probs = jax.nn.softmax(logits).reshape(-1, 8)
    index = jax.lax.top_k(probs, 2)[1]
    assert float(aux) == pytest.approx(0.5 * float(load_balancing_loss(probs, index)), rel=1e-6)
    assert layers.make_layer("moe-mlp").aux_loss_coef == 0.01

    # The aux loss trains the router.
    def aux_of(p):
        return apply_sown(layer, p, x)[1]["losses"]["aux_loss"][0]

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
    params, _ = init_on_input(layers.make_layer("moe-mlp"), (2, 5, 128))
    assert np.abs(np.asarray(params["w_up"])).max() <= 1 / np.sqrt(128)
    down = np.abs(np.asarray(params["w_down"])).max()
    assert 0.9 / np.sqrt(16) < down <= 1 / np.sqrt(16)
    np.testing.assert_array_equal(np.asarray(params["router_bias"]), 0.0)


# ---- moe-mlp-paper ----

def _paper_moe_params(dim, experts, width, use_bias=False):
    """up and gate [D, E F], one dense down map [E F, D E], router [D, E] + [E], unread gates
    [E, F]; biases of up/gate/down when used."""
    biases = (2 * experts * width + dim * experts) if use_bias else 0
    return (2 * dim * experts * width + experts * width * dim * experts + dim * experts + experts
            + experts * width + biases)


@pytest.mark.parametrize("dim,experts,active,width,use_bias", [(128, 8, 2, 16, False),
                                                               (32, 4, 1, 8, True)])
def test_moe_paper_paramcount_layer_params(dim, experts, active, width, use_bias):
    layer = layers.make_layer("moe-mlp-paper", num_experts=experts, active_experts=active,
                              expert_dim=width, use_bias=use_bias)
    assert count_layer_params(layer, dim) == _paper_moe_params(dim, experts, width, use_bias)


def test_paper_routing_zeroes_non_top_k_logits_before_the_softmax():
    logits = np.array([[[2.0, -1.0, 0.5, 3.0]], [[-2.0, -3.0, -1.0, -4.0]]])
    weights = np.asarray(paper_routing_weights(jnp.asarray(logits), 2))
    kept = np.array([[[2.0, 0.0, 0.0, 3.0]], [[-2.0, 0.0, -1.0, 0.0]]])
    np.testing.assert_allclose(weights, np.exp(kept) / np.exp(kept).sum(-1, keepdims=True),
                               rtol=1e-6)
    # Non-top-k experts keep weight exp(0) / Z: above the top two when those are negative.
    assert weights[1, 0, 1] > weights[1, 0, 0]


def test_moe_paper_matches_formula_and_sows_no_loss():
    layer = layers.make_layer("moe-mlp-paper", num_experts=4, active_experts=2, expert_dim=8,
                              use_bias=True)
    params, x = init_on_input(layer, (2, 6, 32))
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # non-zero biases
    y, state = apply_sown(layer, params, x)
    assert "losses" not in state
    x64 = np.asarray(x, np.float64)
    w = {n: {k: np.asarray(v, np.float64) for k, v in params[n].items()}
         for n in ("w_up", "w_gate", "w_down", "router")}
    lin = lambda n, a: a @ w[n]["kernel"] + w[n]["bias"]  # noqa: E731
    z = lin("w_down", lin("w_up", x64) * _gelu_tanh(lin("w_gate", x64))).reshape(2, 6, 32, 4)
    logits = lin("router", x64)
    kth = np.sort(logits, -1)[..., -2:-1]
    kept = np.where(logits < kth, 0.0, logits)
    weights = np.exp(kept) / np.exp(kept).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(y), (z * weights[:, :, None, :]).sum(-1),
                               rtol=1e-5, atol=1e-6)
    (sown,) = state["intermediates"]["routing_weights"]
    np.testing.assert_allclose(np.asarray(sown), weights, rtol=1e-5, atol=1e-7)


def test_moe_paper_init_and_unread_gates():
    layer = layers.make_layer("moe-mlp-paper")
    params, x = init_on_input(layer, (2, 5, 128))
    down = np.abs(np.asarray(params["w_down"]["kernel"]))
    assert 0.9 / np.sqrt(128) < down.max() <= 1 / np.sqrt(128)  # fan-in E F = 128
    np.testing.assert_array_equal(np.asarray(params["router"]["bias"]), 0.0)
    assert 0.8 < np.asarray(params["gates"]).std() < 1.2  # N(0, 1), as torch.randn
    grads = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) ** 2)))(params)
    np.testing.assert_array_equal(np.asarray(grads["gates"]), 0.0)
    assert np.any(np.asarray(grads["router"]["kernel"]) != 0)


def test_moe_paper_flops_count_the_dense_computation():
    layer = layers.make_layer("moe-mlp-paper")
    L, D, E, F = 10, 128, 8, 16
    expected = (2 * dense_flops(L, D, E * F) + dense_flops(L, E * F, D * E) + 2 * L * E * F
                + dense_flops(L, D, E) + 2 * L * E + 2 * L * D * E)
    assert layer.flops(dim=D, seq_len=L) == expected
    assert layer.state_size(dim=D, seq_len=L) == 0


def test_moe_paper_bfloat16_compute_keeps_routing_in_float32():
    layer = layers.make_layer("moe-mlp-paper", dtype=jnp.bfloat16)
    params, x = init_on_input(layer, (2, 4, 128))
    y, state = apply_sown(layer, params, x)
    assert y.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y, np.float32)))
    assert state["intermediates"]["routing_weights"][0].dtype == jnp.float32

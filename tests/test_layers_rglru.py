"""rg-lru (Hawk / Griffin's recurrent block): the block against a float64 step-by-step numpy
recurrence, FLOP / state / parameter formulas, the Lambda init, and that neither backbone re-draws
Lambda or the gate biases."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import layers, models
from mad_jax.layers.initializers import linear_init_override
from mad_jax.layers.rglru import sqrt_bounded_gradient

from layer_harness import float64, init_params, run_jitted

DIM = 32  # R = 3.5 * 32 = 112 = 16 heads of 7

# Oracle comparisons need true float32 matmuls (GPUs default to TF32 for float32).
pytestmark = pytest.mark.usefixtures("full_precision_matmuls")


@pytest.fixture(scope="module")
def block():
    """The registered layer at width 32, with random gate biases and a spread-out Lambda so that
    every gate and decay matters; one jitted apply shared by the tests."""
    layer = layers.make_layer("rg-lru")
    x = jax.random.normal(jax.random.key(0), (2, 8, DIM), jnp.float32)
    params = init_params(layer, x)
    rng = np.random.default_rng(2)
    for gate in ("recurrence_gate", "input_gate"):
        bias = params[gate]["bias"]
        params[gate] = {**params[gate], "bias": jnp.asarray(rng.standard_normal(bias.shape),
                                                            jnp.float32)}
    params["Lambda"] = params["Lambda"] - 4.0 * jnp.asarray(
        rng.uniform(0, 1, params["Lambda"].shape), jnp.float32)
    return layer, params, lambda p, x: run_jitted(lambda p, x: layer.apply({"params": p}, x), p, x)


def step_by_step_float64(p, x, c=8.0):
    """The recurrent block token by token in float64 (the module docstring's equations)."""
    p = float64(p)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    gelu = lambda z: 0.5 * z * (  # noqa: E731  (flax's nn.gelu: the tanh approximation)
        1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))

    def block_diagonal(u, dense):  # u [B, R] -> [B, R], one [R/H, R/H] block per head
        heads, width = dense["kernel"].shape[0], dense["kernel"].shape[1]
        u_heads = u.reshape(u.shape[0], heads, width)
        return (np.einsum("bhi,hio->bho", u_heads, dense["kernel"]) + dense["bias"]).reshape(
            u.shape)

    x = np.asarray(x, np.float64)
    batch, seq_len, _ = x.shape
    w_conv = p["conv1d"]["kernel"]  # [K, R]; tap K-1 sees the current token
    width = w_conv.shape[1]
    window = np.zeros((batch, w_conv.shape[0], width))
    h = np.zeros((batch, width))
    log_a_base = -c * np.log1p(np.exp(-p["Lambda"]))  # -c softplus(-Lambda)
    out = []
    for t in range(seq_len):
        gate = gelu(x[:, t] @ p["gate_proj"]["kernel"] + p["gate_proj"]["bias"])
        window = np.concatenate(
            [window[:, 1:], (x[:, t] @ p["in_proj"]["kernel"] + p["in_proj"]["bias"])[:, None]], 1)
        u = (window * w_conv).sum(1) + p["conv1d"]["bias"]
        r = sigmoid(block_diagonal(u, p["recurrence_gate"]))
        i = sigmoid(block_diagonal(u, p["input_gate"]))
        a = np.exp(log_a_base * r)
        h = a * h + np.sqrt(1 - a ** 2) * (i * u)
        out.append((h * gate) @ p["out_proj"]["kernel"] + p["out_proj"]["bias"])
    return np.stack(out, axis=1)


@pytest.mark.parametrize("seq_len", [16, 37])
def test_parallel_block_matches_float64_step_by_step(block, seq_len):
    """16 is a power of two; 37 is odd and prime, so the associative scan's odd splits run."""
    _, params, apply = block
    x = jax.random.normal(jax.random.key(seq_len), (2, seq_len, DIM), jnp.float32)
    np.testing.assert_allclose(np.asarray(apply(params, x)), step_by_step_float64(params, x),
                               rtol=1e-4, atol=1e-5)


def test_bfloat16_forward_is_finite(block):
    _, params, _ = block
    layer16 = layers.make_layer("rg-lru", dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(3), (1, 24, DIM), jnp.float32)
    y = run_jitted(lambda p, x: layer16.apply({"params": p}, x), params, x)
    assert y.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y, np.float32)))


def test_flops_state_and_params_at_width_128():
    layer = layers.make_layer("rg-lru")
    assert (layer.expand, layer.num_heads, layer.conv_width, layer.c) == (3.5, 16, 4, 8.0)
    d, r, h, k, seq = 128, 448, 16, 4, 1024
    # State: h (R) + the conv's last K-1 inputs, as much as mamba's 2D*4 + 3*2D at D=128.
    assert layer.state_size(d, seq) == layer.state_size(d, 7) == r + (k - 1) * r == 1792
    assert layer.state_size(d, seq) == layers.make_layer("mamba").state_size(d, seq)
    want_flops = (2 * 2 * seq * d * r + 2 * seq * r + seq * r      # gate and input maps, GeLU
                  + 2 * k * seq * r                                # conv
                  + 2 * 2 * seq * r * (r // h) + 4 * seq * r       # gates, biases, sigmoids
                  + 9 * seq * r + seq * r                          # RG-LRU, product with the gate
                  + 2 * seq * r * d + seq * d)                     # output map
    assert layer.flops(d, seq) == want_flops == 415_301_632
    assert layer.flops(d, 2 * seq) == 2 * want_flops
    shapes = nn.unbox(jax.eval_shape(layer.init, jax.random.key(0),
                                     jax.ShapeDtypeStruct((1, 4, d), jnp.float32))["params"])
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
    assert n_params == (2 * (d * r + r) + (k * r + r) + 2 * (h * (r // h) ** 2 + r) + r
                        + (r * d + d)) == 201_728


def test_width_not_divisible_by_heads_is_a_one_line_error():
    layer = layers.make_layer("rg-lru")
    with pytest.raises(ValueError, match="multiple of num_heads=16"):
        layer.rnn_width(40)


def test_sqrt_gradient_is_bounded_near_zero():
    grad = jax.grad(sqrt_bounded_gradient)
    assert float(grad(1.0)) == pytest.approx(0.5)
    assert float(grad(0.0)) == pytest.approx(1000.0)
    assert float(sqrt_bounded_gradient(0.25)) == 0.5


def _rglru_params(backbone):
    model = models.build(["rg-lru", "swiglu"], vocab_size=16, max_length=32, dim=DIM,
                         backbone=backbone)
    tokens = jnp.zeros((1, 32), jnp.int32)
    params = init_params(model, tokens, seed=0)
    return params["encoder"]["block_0"]["mixer"]


def _assert_own_init(mixer):
    a_pow_c = np.asarray(jax.nn.sigmoid(mixer["Lambda"]), np.float64) ** 8
    assert np.all(a_pow_c >= 0.9 - 1e-6) and np.all(a_pow_c <= 0.999 + 1e-6)
    # Uniform over [0.9, 0.999]: mean 0.9495, both ends reached.
    assert abs(a_pow_c.mean() - 0.9495) < 0.01 and a_pow_c.min() < 0.91 and a_pow_c.max() > 0.99
    for gate in ("recurrence_gate", "input_gate"):
        np.testing.assert_array_equal(np.asarray(mixer[gate]["bias"]), 0.0)


@pytest.mark.parametrize("backbone", ["language-model", "autoencoder"])
def test_backbones_keep_lambda_and_gate_biases(backbone):
    mixer = _rglru_params(backbone)
    _assert_own_init(mixer)
    kernel_std = float(np.std(np.asarray(mixer["in_proj"]["kernel"])))
    if backbone == "autoencoder":  # the Linear weights were re-drawn N(0, 0.02): the swap ran
        assert abs(kernel_std - 0.02) < 0.002
    else:  # PyTorch default U(+-1/sqrt(32)): std 1/sqrt(96)
        assert abs(kernel_std - 1 / math.sqrt(3 * DIM)) < 0.01


def test_linear_init_override_leaves_recurrence_parameters_alone():
    """A sentinel override: every Linear weight and bias takes it, Lambda and the gate biases
    do not (they carry no Linear marker)."""
    layer = layers.make_layer("rg-lru")
    x = jnp.zeros((1, 4, DIM), jnp.float32)
    with linear_init_override(nn.initializers.constant(0.5), nn.initializers.constant(0.25)):
        params = nn.unbox(run_jitted(layer.init, jax.random.key(0), x)["params"])
    for name in ("gate_proj", "in_proj", "out_proj"):
        np.testing.assert_array_equal(np.asarray(params[name]["kernel"]), 0.5)
    for gate in ("recurrence_gate", "input_gate"):
        np.testing.assert_array_equal(np.asarray(params[gate]["kernel"]), 0.5)
    _assert_own_init(params)

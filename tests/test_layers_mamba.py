"""Mamba: parameter count, state size, the dt / A / D initialisation, and the block against a
token-by-token numpy transcription of the reference's decoding `step`."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import layers
from mad_jax.layers.mamba import Mamba
from mad_jax.models import count_params

from layer_harness import apply, init_params, random_input

# Oracle comparisons need true float32 matmuls (GPUs default to TF32 for float32).
pytestmark = pytest.mark.usefixtures("full_precision_matmuls")


def mamba_params(dim, d_state=4, d_conv=4, expand=2):
    inner = expand * dim
    rank = math.ceil(dim / 16)
    return (dim * 2 * inner                      # in_proj (no bias)
            + inner * d_conv + inner             # depthwise conv + bias
            + inner * (rank + 2 * d_state)       # x_proj (no bias)
            + rank * inner + inner               # dt_proj + dt bias
            + inner * d_state + inner            # A_log, D
            + inner * dim)                       # out_proj (no bias)


@pytest.mark.parametrize("config,dim", [({}, 128), ({"d_state": 8, "d_conv": 3, "expand": 1}, 40)])
def test_param_count(config, dim):
    layer = layers.make_layer("mamba", **config)
    p = init_params(layer, random_input((1, 8, dim)))
    assert count_params(p) == mamba_params(dim, **config)
    if not config:
        assert count_params(p) == 107_264


def test_default_config_and_state_size():
    layer = layers.make_layer("mamba")
    assert (layer.d_state, layer.d_conv, layer.expand, layer.dt_min, layer.dt_max) == \
        (4, 4, 2, 1e-3, 1e-1)
    # expand*D*d_state SSM state + (d_conv-1)*expand*D conv tail, whatever the length.
    assert layer.state_size(128, 100) == layer.state_size(128, 5000) == 256 * 4 + 3 * 256
    assert layers.make_layer("mamba", d_state=8, d_conv=3, expand=1).state_size(40, 7) == \
        40 * 8 + 2 * 40


def test_dt_init_in_range_and_log_uniform():
    layer = layers.make_layer("mamba")
    p = init_params(layer, random_input((1, 4, 128)))
    dt = np.asarray(jax.nn.softplus(p["dt_proj"]["bias"]))
    assert dt.shape == (256,)
    assert np.all(dt >= 1e-3 * (1 - 1e-5)) and np.all(dt <= 1e-1 * (1 + 1e-5))
    # log-uniform: log dt spreads over the whole interval, about half below the geometric middle.
    assert dt.min() < 2e-3 and dt.max() > 5e-2
    assert 0.3 < np.mean(dt < 1e-2) < 0.7
    bound = 1 / math.sqrt(layer.sizes(128)[1])
    assert np.all(np.abs(p["dt_proj"]["kernel"]) <= bound)


def test_a_and_d_init():
    layer = layers.make_layer("mamba")
    p = init_params(layer, random_input((1, 4, 128)))
    a = -np.exp(np.asarray(p["A_log"]))
    np.testing.assert_allclose(a, -np.tile(np.arange(1, 5, dtype=np.float32), (256, 1)),
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(p["D"]), np.ones(256, np.float32))


def reference_step_loop(p, u, d_state, rank):
    """The reference Mamba's decoding `step`, token by token, in float64."""
    f = {k: (np.asarray(v, np.float64) if not isinstance(v, dict)
             else {kk: np.asarray(vv, np.float64) for kk, vv in v.items()}) for k, v in p.items()}
    silu = lambda a: a / (1 + np.exp(-a))  # noqa: E731
    softplus = lambda a: np.log1p(np.exp(a))  # noqa: E731
    batch, seq_len, _ = u.shape
    w_conv = f["conv1d"]["kernel"]  # [K, I]; tap K-1 is the current token
    inner = w_conv.shape[1]
    conv_state = np.zeros((batch, w_conv.shape[0], inner))
    ssm_state = np.zeros((batch, inner, d_state))
    a = -np.exp(f["A_log"])
    out = []
    for t in range(seq_len):
        xz = np.asarray(u[:, t], np.float64) @ f["in_proj"]["kernel"]
        x, z = xz[:, :inner], xz[:, inner:]
        conv_state = np.concatenate([conv_state[:, 1:], x[:, None]], axis=1)
        x = silu((conv_state * w_conv).sum(1) + f["conv1d"]["bias"])
        dbc = x @ f["x_proj"]["kernel"]
        dt, b, c = dbc[:, :rank], dbc[:, rank:rank + d_state], dbc[:, rank + d_state:]
        dt = softplus(dt @ f["dt_proj"]["kernel"] + f["dt_proj"]["bias"])
        d_a = np.exp(dt[..., None] * a)
        d_b = dt[..., None] * b[:, None]
        ssm_state = ssm_state * d_a + x[..., None] * d_b
        y = (ssm_state * c[:, None]).sum(-1) + f["D"] * x
        out.append((y * silu(z)) @ f["out_proj"]["kernel"])
    return np.stack(out, axis=1)


@pytest.mark.parametrize("seq_len", [1, 7, 16])
def test_matches_reference_recurrent_step(seq_len):
    layer = layers.make_layer("mamba", kernel_impl="xla")
    x = random_input((2, seq_len, 32))
    p = init_params(layer, x)
    # Make the dynamics visible: larger dt and non-trivial A.
    p = {**p, "dt_proj": {**p["dt_proj"], "bias": p["dt_proj"]["bias"] + 3.0},
         "A_log": p["A_log"] + 0.1 * random_input(p["A_log"].shape, seed=4)}
    y = np.asarray(apply(layer, p, x))
    want = reference_step_loop(p, np.asarray(x), layer.d_state, layer.sizes(32)[1])
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_causal_and_bfloat16():
    layer = layers.make_layer("mamba", dtype=jnp.bfloat16)
    x = random_input((1, 9, 32))
    p = init_params(layer, x)
    y = apply(layer, p, x)
    assert y.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y, np.float32)))
    layer32 = layers.make_layer("mamba")
    y = np.asarray(apply(layer32, p, x))
    x2 = np.asarray(x).copy()
    x2[:, 5:] = np.asarray(random_input((1, 4, 32), seed=3))
    np.testing.assert_allclose(np.asarray(apply(layer32, p, x2))[:, :5], y[:, :5], rtol=1e-6)


def test_flops_grow_with_length():
    layer = layers.make_layer("mamba")
    assert isinstance(layer, Mamba)
    f1, f2 = layer.flops(128, 128), layer.flops(128, 256)
    assert f2 == 2 * f1  # everything in Mamba is linear in L

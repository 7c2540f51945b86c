"""Layer-specific checks of `deltanet` and `gated-deltanet`: the whole layer against a float64
token-by-token loop, accounting formulas, and the init the backbones keep."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import layers, models
from mad_jax.layers.accounting import dense_flops

from layer_harness import apply_sown, count_layer_params, float64, init_on_input

F64 = np.float64
DIM, SEQ_LEN, CHUNK = 32, 20, 8  # 20 steps in chunks of 8: two whole chunks and a padded one


def _silu(x):
    return x / (1 + np.exp(-x))


def _conv(x, w):
    """Causal depthwise conv: tap w[-1] on the current token. x [L, C], w [Kc, C]."""
    taps = w.shape[0]
    xpad = np.concatenate([np.zeros((taps - 1, x.shape[1])), x])
    return sum(xpad[j:j + len(x)] * w[j] for j in range(taps))


def _naive_layer(p, x, heads, dk, gated, eps=1e-5):
    """The layer of mad_jax/layers/deltanet.py token by token in float64."""
    batch, seq_len, _ = x.shape
    y = np.zeros_like(x)
    for b in range(batch):
        q = _silu(_conv(x[b] @ p["q_proj"]["kernel"], p["q_conv"]["kernel"]))
        k = _silu(_conv(x[b] @ p["k_proj"]["kernel"], p["k_conv"]["kernel"]))
        v = _silu(_conv(x[b] @ p["v_proj"]["kernel"], p["v_conv"]["kernel"]))
        q, k, v = (a.reshape(seq_len, heads, -1) for a in (q, k, v))
        q = q / np.sqrt((q ** 2).sum(-1, keepdims=True) + 1e-6) / np.sqrt(dk)
        k = k / np.sqrt((k ** 2).sum(-1, keepdims=True) + 1e-6)
        beta = 1 / (1 + np.exp(-(x[b] @ p["b_proj"]["kernel"])))
        g = np.zeros((seq_len, heads))
        if gated:
            g = -np.exp(p["A_log"]) * np.logaddexp(0, x[b] @ p["a_proj"]["kernel"] + p["dt_bias"])
        s = np.zeros((heads, dk, v.shape[-1]))
        for t in range(seq_len):
            for h in range(heads):
                kt = k[t, h]
                s[h] = np.exp(g[t, h]) * (s[h] - beta[t, h] * np.outer(kt, kt @ s[h]))
                s[h] += beta[t, h] * np.outer(kt, v[t, h])
            o = np.einsum("hk,hkv->hv", q[t], s)
            o = o / np.sqrt((o ** 2).mean(-1, keepdims=True) + eps) * p["o_norm"]
            if gated:
                o = o * _silu(x[b, t] @ p["g_proj"]["kernel"]).reshape(o.shape)
            y[b, t] = o.reshape(-1) @ p["o_proj"]["kernel"]
    return y


@functools.lru_cache(maxsize=None)
def _layer(name):
    """The registered layer (chunk 8) at width 32, its params and input, built once per module.
    Callers must not modify the returned params."""
    layer = layers.make_layer(name, chunk_size=CHUNK)
    params, x = init_on_input(layer, (2, SEQ_LEN, DIM))
    return layer, params, x, functools.partial(apply_sown, layer)


@pytest.mark.parametrize("name", ["deltanet", "gated-deltanet"])
def test_layer_matches_float64_token_loop(name):
    layer, params, x, apply = _layer(name)
    p = float64(params)
    # A trained-looking gate and norm: decays from about exp(-3) to 1 that differ by token.
    if layer.gated:
        p["a_proj"]["kernel"] = 3.0 * p["a_proj"]["kernel"]
        p["A_log"] = np.log(np.linspace(0.5, 2.0, 8))
    p["o_norm"] = 1.0 + 0.3 * np.random.default_rng(0).standard_normal(p["o_norm"].shape)
    y, sown = apply(jax.tree_util.tree_map(jnp.asarray, p), x)
    expected = _naive_layer(p, np.asarray(x, F64), 8, 16, layer.gated)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=2e-4, atol=2e-5)
    beta = np.asarray(sown["intermediates"]["beta"][0])
    assert beta.shape == (2, 8, SEQ_LEN) and np.all((beta > 0) & (beta < 1))
    if layer.gated:
        log_gate = np.asarray(sown["intermediates"]["log_gate"][0])
        assert np.all(log_gate <= 0) and log_gate.min() < -0.5 and log_gate.std() > 0.05


def test_gated_init_and_registered_defaults():
    layer, params, _, _ = _layer("gated-deltanet")
    a = np.exp(np.asarray(params["A_log"]))
    assert a.shape == (8,) and np.all((a > 0) & (a <= 16))
    dt = np.logaddexp(0, np.asarray(params["dt_bias"]))  # softplus(dt_bias) = dt in [1e-3, 0.1]
    assert np.all((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5)))
    assert (layer.num_heads, layer.head_dim, layer.expand_v, layer.conv_size) == (8, 16, 1.0, 4)
    assert "A_log" not in _layer("deltanet")[1] and "g_proj" not in _layer("deltanet")[1]


@pytest.mark.parametrize("gated", [False, True])
def test_param_count_state_and_flops_formulas(gated):
    D, L, H, K, V, Kc = 128, 1024, 8, 16, 16, 4
    layer = layers.make_layer("gated-deltanet" if gated else "deltanet")
    ck, cv = H * K, H * V
    # q/k/v and beta maps, three convs (no bias), the output map, the norm weight; gated: the
    # alpha and output-gate maps, A_log and dt_bias.
    params = D * (2 * ck + cv) + D * H + Kc * (2 * ck + cv) + cv * D + V
    if gated:
        params += D * H + D * cv + 2 * H
    assert count_layer_params(layer, D) == params
    assert layer.state_size(dim=D, seq_len=L) == H * K * V + (Kc - 1) * (2 * ck + cv) == 3200
    flops = (dense_flops(L, D, 2 * ck + cv) + dense_flops(L, D, H) + 2 * Kc * L * (2 * ck + cv)
             + L * (2 * ck + cv) + 6 * L * ck + L * ck + L * H
             + L * H * (6 * K * V + 2 * V) + 3 * L * cv + dense_flops(L, cv, D))
    if gated:
        flops += (dense_flops(L, D, H) + 3 * L * H + L * H * K * V + dense_flops(L, D, cv)
                  + 2 * L * cv)
    assert layer.flops(dim=D, seq_len=L) == flops


def test_wider_heads_and_expand_v_change_state():
    layer = layers.make_layer("gated-deltanet", num_heads=2, head_dim=64, expand_v=2.0)
    assert layer.state_size(dim=128, seq_len=1) == 2 * 64 * 128 + 3 * (2 * 128 + 256)
    with pytest.raises(ValueError, match="expand_v"):
        layers.make_layer("deltanet", expand_v=1.03).sizes()


@functools.lru_cache(maxsize=None)
def _model_params(backbone):
    model = models.build(["gated-deltanet", "swiglu"], vocab_size=16, max_length=32, dim=32,
                         backbone=backbone)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]
    return nn.unbox(params)["encoder"]["block_0"]["mixer"]


def test_backbones_keep_the_gate_init():
    """A_log and dt_bias are not Linear weights: the autoencoder's N(0, 0.02) re-draw of every
    Linear leaves them (and the convs) as the language model initialises them."""
    lm, ae = _model_params("language-model"), _model_params("autoencoder")
    for mixer in (lm, ae):
        a = np.exp(np.asarray(mixer["A_log"]))
        assert np.all((a > 0) & (a <= 16)) and a.max() > 4  # U(0, 16), not N(0, 0.02)
        dt = np.logaddexp(0, np.asarray(mixer["dt_bias"]))
        assert np.all((dt >= 0.999e-3) & (dt <= 0.1001))
    for name in ("A_log", "dt_bias"):
        np.testing.assert_array_equal(np.asarray(ae[name]), np.asarray(lm[name]))
    np.testing.assert_array_equal(np.asarray(ae["q_conv"]["kernel"]),
                                  np.asarray(lm["q_conv"]["kernel"]))
    w = np.asarray(ae["q_proj"]["kernel"])  # while the Linear maps are re-drawn
    assert abs(w.std() - 0.02) < 0.004 and not np.array_equal(w, np.asarray(lm["q_proj"]["kernel"]))


@pytest.mark.parametrize("name", ["deltanet", "gated-deltanet"])
def test_bfloat16_forward_is_finite_and_close(name):
    layer, params, x, apply = _layer(name)
    y32 = np.asarray(apply(params, x)[0])
    layer16 = layers.make_layer(name, chunk_size=CHUNK, dtype=jnp.bfloat16)
    y16 = jax.jit(lambda p, x: layer16.apply({"params": p}, x))(params, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    y16 = np.asarray(y16, np.float32)
    assert np.all(np.isfinite(y16))
    np.testing.assert_allclose(y16, y32, atol=0.05 * np.abs(y32).max() + 1e-3)

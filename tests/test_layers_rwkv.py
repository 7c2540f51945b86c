"""Layer-specific checks of the RWKV-5/6 time mixers and the RWKV channel mixers."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import layers
from mad_jax.layers.accounting import dense_flops
from mad_jax.layers.rwkv import token_shift

from layer_harness import apply, apply_sown, count_layer_params, float64, init_on_input

F64 = np.float64


@functools.lru_cache(maxsize=None)
def _time_mixer(name):
    """A time mixer at its defaults (head size 16), width 64 (4 heads), L = 9: built once per module
    so that the tests share its compiled ops. Callers must not modify the returned params."""
    layer = layers.make_layer(name)
    return (layer, *init_on_input(layer, (2, 9, 64)))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _apply_with_decay(layer, params, x):
    y, state = apply_sown(layer, params, x)
    (log_decay,) = state["intermediates"]["log_decay"]
    return np.asarray(y), np.asarray(log_decay)


# ---- token shift ----

def test_token_shift_shifts_by_one_with_zero_start():
    x = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3) + 1
    shifted = np.asarray(token_shift(x))
    np.testing.assert_array_equal(shifted[:, 0], 0.0)
    np.testing.assert_array_equal(shifted[:, 1:], np.asarray(x)[:, :-1])
    assert token_shift(x[:, :1]).shape == (2, 1, 3)


@pytest.mark.parametrize("name", ["rwkv5-channel-mixer", "rwkv6-channel-mixer"])
def test_channel_mixer_reads_only_current_and_previous_token(name):
    layer = layers.make_layer(name)
    params, x = init_on_input(layer, (2, 8, 32))
    y = np.asarray(apply(layer, params, x))
    t = 5
    for s, changes in ((t - 2, False), (t - 1, True), (t, True)):
        y2 = np.asarray(apply(layer, params, x.at[:, s].add(1.0)))
        assert np.allclose(y2[:, t], y[:, t], atol=1e-6) != changes, (s, changes)


@pytest.mark.parametrize("name", ["rwkv5-channel-mixer", "rwkv6-channel-mixer"])
def test_channel_mixer_matches_formula(name):
    layer = layers.make_layer(name, hidden_dim=40)
    params, x = init_on_input(layer, (2, 7, 32))
    y = np.asarray(apply(layer, params, x))
    p = float64(params)
    x = np.asarray(x, F64)
    prev = np.concatenate([np.zeros_like(x[:, :1]), x[:, :-1]], axis=1)  # zero before the start
    xk = x * p["mix_k"] + prev * (1 - p["mix_k"])
    xr = x * p["mix_r"] + prev * (1 - p["mix_r"])
    k = np.maximum(xk @ p["key"]["kernel"], 0) ** 2
    expected = _sigmoid(xr @ p["receptance"]["kernel"]) * (k @ p["value"]["kernel"])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    # The reference's init of the mix coefficients: i / D.
    np.testing.assert_allclose(p["mix_k"], np.arange(32) / 32, atol=1e-7)


@pytest.mark.parametrize("dim,hidden,expected_hidden",
                         [(128, None, 512), (32, None, 128), (32, 40, 40)])
def test_channel_mixer_param_count_and_accounting(dim, hidden, expected_hidden):
    layer = layers.make_layer("rwkv6-channel-mixer", hidden_dim=hidden)
    f = expected_hidden
    # mix_k, mix_r [D]; key [D, F]; value [F, D]; receptance [D, D].
    assert count_layer_params(layer, dim) == 2 * dim + dim * f + f * dim + dim * dim
    assert layer.state_size(dim=dim, seq_len=100) == dim
    L = 10
    assert layer.flops(dim=dim, seq_len=L) == (
        6 * L * dim + dense_flops(L, dim, f) + 2 * L * f + dense_flops(L, f, dim)
        + dense_flops(L, dim, dim) + 2 * L * dim)


# ---- time mixers: a naive per-step loop of the whole layer ----

def _group_norm(o, scale, bias, eps=64e-5):
    mean = o.mean(-1, keepdims=True)
    var = ((o - mean) ** 2).mean(-1, keepdims=True)
    return (o - mean) / np.sqrt(var + eps) * scale + bias


def _rwkv5_inputs(p, x_t, prev):
    def lerp(mix):
        return x_t * mix + prev * (1 - mix)

    r = lerp(p["mix_r"]) @ p["receptance"].reshape(x_t.shape[-1], -1)
    k = lerp(p["mix_k"]) @ p["key"].reshape(x_t.shape[-1], -1)
    v = lerp(p["mix_v"]) @ p["value"].reshape(x_t.shape[-1], -1)
    g = lerp(p["mix_g"]) @ p["gate"].reshape(x_t.shape[-1], -1)
    w = np.exp(-np.exp(p["decay"].reshape(-1)))
    return r, k, v, g, w


def _rwkv6_inputs(p, x_t, prev):
    dim = x_t.shape[-1]
    delta = prev - x_t
    low = np.tanh((x_t + delta * p["maa_x"]) @ p["maa_lora_a"].reshape(dim, -1)).reshape(5, -1)
    m = np.einsum("fr,frd->fd", low, p["maa_lora_b"])
    mus = [p["maa_w"], p["maa_k"], p["maa_v"], p["maa_r"], p["maa_g"]]
    xw, xk, xv, xr, xg = (x_t + delta * (mu + m[i]) for i, mu in enumerate(mus))
    r = xr @ p["receptance"].reshape(dim, -1)
    k = xk @ p["key"].reshape(dim, -1)
    v = xv @ p["value"].reshape(dim, -1)
    g = xg @ p["gate"].reshape(dim, -1)
    ww = np.tanh(xw @ p["decay_lora_a"]) @ p["decay_lora_b"].reshape(p["decay_lora_b"].shape[0], -1)
    w = np.exp(-np.exp(p["decay"].reshape(-1) + ww))
    return r, k, v, g, w


def _naive_time_mixer(p, x, head_dim, inputs_fn):
    """Token by token: o_t = r_t (S + diag(u) k_t^T v_t), then S = diag(w_t) S + k_t^T v_t."""
    batch, seq_len, dim = x.shape
    heads = dim // head_dim
    u = p["bonus"]
    y = np.zeros_like(x)
    for b in range(batch):
        state = np.zeros((heads, head_dim, head_dim))
        prev = np.zeros(dim)
        for t in range(seq_len):
            r, k, v, g, w = (a.reshape(heads, head_dim) for a in inputs_fn(p, x[b, t], prev))
            prev = x[b, t]
            kv = k[:, :, None] * v[:, None, :]
            o = np.einsum("hk,hkv->hv", r, state + u[:, :, None] * kv)
            state = w[:, :, None] * state + kv
            o = _group_norm(o, p["norm_scale"], p["norm_bias"])
            silu_g = g / (1 + np.exp(-g))
            y[b, t] = np.einsum("hk,hkd->d", o * silu_g, p["output"])
    return y


def _perturb(params, names, scale, seed=3):
    """Replaces the named parameters with N(0, scale^2) draws, so data-dependent paths matter."""
    params = dict(params)
    for i, name in enumerate(names):
        params[name] = scale * jax.random.normal(jax.random.key(seed + i), params[name].shape)
    return params


@pytest.mark.parametrize("name,inputs_fn", [("rwkv5-time-mixer", _rwkv5_inputs),
                                            ("rwkv6-time-mixer", _rwkv6_inputs)])
def test_time_mixer_matches_naive_recurrence(name, inputs_fn):
    layer, params, x = _time_mixer(name)
    # Random decays, bonus and norm affine; for RWKV-6, LoRA maps large enough to matter (the
    # per-step decays then range over about exp(-2) .. 1 and differ between tokens).
    params = _perturb(params, ["bonus", "norm_scale", "norm_bias"], 0.5)
    if "6" in name:
        lora = ["maa_lora_a", "maa_lora_b", "decay_lora_a", "decay_lora_b"]
        params = _perturb(params, lora, 0.1, seed=10)
    params["decay"] = params["decay"] + jax.random.normal(jax.random.key(9), params["decay"].shape)
    y = np.asarray(apply(layer, params, x))
    expected = _naive_time_mixer(float64(params), np.asarray(x, F64), 16, inputs_fn)
    np.testing.assert_allclose(y, expected, rtol=2e-4, atol=2e-5)


def test_rwkv5_decay_is_in_unit_interval_and_data_independent():
    layer, params, x = _time_mixer("rwkv5-time-mixer")
    _, log_decay = _apply_with_decay(layer, params, x)
    _, log_decay_other = _apply_with_decay(layer, params, 3.0 * x[::-1] + 1.0)
    decay = np.exp(log_decay)
    assert decay.shape == (2, 9, 4, 16)
    assert np.all(decay > 0) and np.all(decay < 1)
    np.testing.assert_array_equal(log_decay, log_decay_other)
    np.testing.assert_array_equal(log_decay, np.broadcast_to(log_decay[:1, :1], log_decay.shape))
    # Reference init: w0 from -6 to -1 across channels, so w = exp(-exp(w0)) in [0.69, 0.9975].
    w0 = np.asarray(params["decay"]).reshape(-1)
    np.testing.assert_allclose(w0[[0, -1]], [-6.0, -1.0], atol=1e-6)
    assert decay.min() == pytest.approx(np.exp(-np.exp(-1.0)), rel=1e-5)


def test_rwkv6_decay_depends_on_the_input():
    layer, params, x = _time_mixer("rwkv6-time-mixer")
    trained = _perturb(params, ["decay_lora_a", "decay_lora_b"], 0.1)
    _, log_decay = _apply_with_decay(layer, trained, x)
    assert np.all(np.isfinite(log_decay)) and np.all(log_decay < 0)  # w = exp(log_decay) in (0, 1)
    decay = np.exp(log_decay)
    assert decay.std(axis=(0, 1)).min() > 1e-4  # varies over positions for every channel
    _, log_decay_other = _apply_with_decay(layer, trained, x.at[:, 4].add(1.0))
    assert not np.allclose(log_decay[:, 4], log_decay_other[:, 4])
    np.testing.assert_allclose(log_decay[:, :4], log_decay_other[:, :4], rtol=1e-6)
    # The reference initialises the LoRA maps in U(-1e-4, 1e-4).
    for name in ("maa_lora_a", "maa_lora_b", "decay_lora_a", "decay_lora_b"):
        assert 0 < np.abs(np.asarray(params[name])).max() <= 1e-4


@pytest.mark.parametrize("name", ["rwkv5-time-mixer", "rwkv6-time-mixer"])
@pytest.mark.parametrize("seq_len", [1, 3])
def test_time_mixer_short_and_odd_lengths(name, seq_len):
    layer = layers.make_layer(name)
    params, x = init_on_input(layer, (2, seq_len, 64))
    y = np.asarray(apply(layer, params, x))
    assert y.shape == x.shape and np.all(np.isfinite(y))


@pytest.mark.parametrize("dim,head_dim", [(128, 16), (64, 32)])
def test_time_mixer_param_counts_and_state(dim, head_dim):
    heads = dim // head_dim
    r5 = layers.make_layer("rwkv5-time-mixer", head_dim=head_dim)
    # 4 mix vectors, r/k/v/g/output maps, decay, bonus, GroupNorm scale and bias.
    assert count_layer_params(r5, dim) == 4 * dim + 5 * dim * dim + 4 * dim
    r6 = layers.make_layer("rwkv6-time-mixer", head_dim=head_dim)
    # 6 maa vectors, mix LoRA D x 5*32 and 5*32 x D, 5 maps, decay LoRA D x 64 and 64 x D,
    # decay, bonus, GroupNorm scale and bias.
    assert count_layer_params(r6, dim) == (6 * dim + 2 * dim * 5 * 32 + 5 * dim * dim + 2 * dim * 64
                                           + 4 * dim)
    for layer in (r5, r6):
        assert layer.state_size(dim=dim, seq_len=1000) == heads * head_dim * head_dim + dim
    assert layers.make_layer("rwkv5-time-mixer").state_size(dim=128, seq_len=1) == 8 * 256 + 128


def test_time_mixer_flops():
    L, D, H, K = 10, 128, 8, 16
    wkv = L * H * (5 * K * K + 5 * K)
    common = 5 * dense_flops(L, D, D) + wkv + 3 * L * D
    assert layers.make_layer("rwkv5-time-mixer").flops(dim=D, seq_len=L) == 12 * L * D + common
    mix_lora = dense_flops(L, D, 160) + L * 160 + 5 * dense_flops(L, 32, D)
    decay_lora = dense_flops(L, D, 64) + L * 64 + dense_flops(L, 64, D) + 3 * L * D
    assert layers.make_layer("rwkv6-time-mixer").flops(dim=D, seq_len=L) == (
        18 * L * D + mix_lora + decay_lora + common)


def test_time_mixer_rejects_width_not_multiple_of_head_dim():
    layer = layers.make_layer("rwkv5-time-mixer")
    with pytest.raises(ValueError, match="head_dim"):
        layer.init(jax.random.key(0), jnp.ones((1, 4, 40)))


@pytest.mark.parametrize("name", ["rwkv5-time-mixer", "rwkv6-time-mixer"])
def test_bfloat16_compute_stays_close(name):
    layer, params, x = _time_mixer(name)
    y32 = np.asarray(apply(layer, params, x))
    y16 = layers.make_layer(name, dtype=jnp.bfloat16).apply({"params": params}, x)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32,
                               atol=0.05 * np.abs(y32).max() + 1e-3)

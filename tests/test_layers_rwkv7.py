"""Layer-specific checks of `rwkv7-time-mixer`: the whole layer against a float64 token loop in
the paper's [V, K] state layout, its init, accounting formulas, and the init the backbones keep."""
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
DIM, SEQ_LEN, HEAD = 32, 12, 16


@functools.lru_cache(maxsize=None)
def _layer():
    """The registered layer at width 32 (2 heads of 16), params and input, built once."""
    layer = layers.make_layer("rwkv7-time-mixer")
    params, x = init_on_input(layer, (2, SEQ_LEN, DIM))
    return layer, params, x, functools.partial(apply_sown, layer)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _naive_rwkv7(p, x, head):
    """The paper's equations token by token, float64, state S [V, K] per head:
    S_t = S_{t-1} (diag(w_t) - kappa^T (a kappa)) + v_t^T k~_t, o_t = S_t r_t."""
    batch, seq_len, dim = x.shape
    heads = dim // head
    y = np.zeros_like(x)
    for b in range(batch):
        s = np.zeros((heads, head, head))
        prev = np.zeros(dim)
        for t in range(seq_len):
            xt = x[b, t]
            mix = {n: xt + (prev - xt) * p[f"mu_{n}"] for n in "rwkvag"}
            prev = xt
            r = mix["r"] @ p["receptance"]
            k = mix["k"] @ p["key"]
            v = mix["v"] @ p["value"]
            d = p["decay"] + np.tanh(mix["w"] @ p["decay_lora_down"]) @ p["decay_lora_up"]
            w = np.exp(-np.exp(-0.5) * _sigmoid(d))
            a = _sigmoid(p["a_bias"] + (mix["a"] @ p["a_lora_down"]) @ p["a_lora_up"])
            g = _sigmoid(mix["g"] @ p["gate_lora_down"]) @ p["gate_lora_up"]
            kk = (k * p["k_k"]).reshape(heads, head)
            kk = kk / np.sqrt((kk ** 2).sum(-1, keepdims=True) + 1e-6)
            k_new = k * (1 + (a - 1) * p["k_a"])
            r, k_new, v, a, w = (z.reshape(heads, head) for z in (r, k_new, v, a, w))
            o = np.zeros((heads, head))
            for h in range(heads):
                transition = np.diag(w[h]) - np.outer(kk[h], a[h] * kk[h])
                s[h] = s[h] @ transition + np.outer(v[h], k_new[h])
                o[h] = s[h] @ r[h]
            mean = o.mean(-1, keepdims=True)
            var = ((o - mean) ** 2).mean(-1, keepdims=True)
            o = (o - mean) / np.sqrt(var + 64e-5) * p["norm_scale"] + p["norm_bias"]
            o = o + (r * k_new * p["r_k"]).sum(-1, keepdims=True) * v
            y[b, t] = (o.reshape(-1) * g) @ p["output"]
    return y


def test_layer_matches_float64_token_loop_in_the_papers_layout():
    layer, params, x, apply = _layer()
    rng = np.random.default_rng(0)
    p = float64(params)
    # Trained-looking LoRA maps (zero at init) and bonus, so every data-dependent path matters.
    for name in ("decay", "a", "gate"):
        p[f"{name}_lora_down"] = 0.3 * rng.standard_normal(p[f"{name}_lora_down"].shape)
        p[f"{name}_lora_up"] = 3.0 * p[f"{name}_lora_up"]
    p["r_k"] = 0.3 * rng.standard_normal(p["r_k"].shape)
    y, sown = apply(jax.tree_util.tree_map(jnp.asarray, p), x)
    expected = _naive_rwkv7(p, np.asarray(x, F64), HEAD)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=2e-4, atol=2e-5)
    log_w = np.asarray(sown["intermediates"]["log_decay"][0])
    a = np.asarray(sown["intermediates"]["learning_rate"][0])
    assert log_w.shape == a.shape == (2, SEQ_LEN, 2, HEAD)
    assert np.all((log_w < 0) & (log_w > -np.exp(-0.5))) and log_w.std(axis=(0, 1)).min() > 0
    assert np.all((a > 0) & (a < 1))


def test_init_is_the_papers_layer_zero():
    _, p, _, _ = _layer()
    n = np.arange(DIM)
    lin = n / (DIM - 1) - 0.5
    z = ((n % HEAD) - 7.5) / 7.5
    z = z * np.abs(z)
    np.testing.assert_allclose(p["mu_r"], 1 - (n / DIM) ** 0.2, atol=1e-6)
    np.testing.assert_allclose(p["mu_w"], 1 - (n / DIM) ** 0.9, atol=1e-6)
    np.testing.assert_allclose(p["decay"], -6 + 6 * n / (DIM - 1) + 0.5 + 2.5 * z, atol=1e-5)
    np.testing.assert_allclose(p["a_bias"], -0.19 + 0.3 * z + 0.4 * lin, atol=1e-6)
    np.testing.assert_allclose(p["k_k"], 0.71 - 0.1 * lin, atol=1e-6)
    np.testing.assert_allclose(p["k_a"], 1.02, atol=1e-6)
    np.testing.assert_allclose(p["r_k"], -0.04, atol=1e-7)
    for name in ("decay", "a", "gate"):
        assert not np.any(np.asarray(p[f"{name}_lora_down"]))
        up = np.asarray(p[f"{name}_lora_up"], F64)  # [R, D]: orthonormal rows (or columns)
        rank = up.shape[0]
        if rank <= DIM:
            np.testing.assert_allclose(up @ up.T, 0.01 * np.eye(rank), atol=1e-6)
        else:  # gain 0.1 sqrt(R / D), orthonormal columns
            np.testing.assert_allclose(up.T @ up, 0.01 * rank / DIM * np.eye(DIM), atol=1e-6)


def test_param_count_state_and_flops_formulas():
    D, L, H, K = 128, 1024, 8, 16
    layer = layers.make_layer("rwkv7-time-mixer")
    # 6 lerp vectors, r/k/v/output maps, LoRAs of rank 32, 32, 64, decay and a biases,
    # k_k, k_a, r_k, GroupNorm scale and bias.
    assert count_layer_params(layer, D) == (6 * D + 4 * D * D + 2 * D * (32 + 32 + 64) + 2 * D
                                            + 3 * D + 2 * D) == 99_968
    # The state is H K^2 + D, not D K^2: 2176 at the defaults.
    assert layer.state_size(dim=D, seq_len=L) == H * K * K + D == 2176
    assert layers.make_layer("rwkv7-time-mixer", head_dim=32).state_size(dim=D, seq_len=1) == (
        4 * 32 * 32 + D)
    flops = (13 * L * D + 4 * dense_flops(L, D, D)
             + dense_flops(L, D, 32) + 32 * L + dense_flops(L, 32, D) + 3 * L * D
             + dense_flops(L, D, 32) + dense_flops(L, 32, D) + 2 * L * D
             + dense_flops(L, D, 64) + 64 * L + dense_flops(L, 64, D)
             + 8 * L * D + 9 * L * H * K * K + 9 * L * D)
    assert layer.flops(dim=D, seq_len=L) == flops


def test_rejects_width_not_multiple_of_head_dim():
    with pytest.raises(ValueError, match="head_dim"):
        layers.make_layer("rwkv7-time-mixer").init(jax.random.key(0), jnp.ones((1, 4, 40)))


@functools.lru_cache(maxsize=None)
def _model_mixer(backbone):
    model = models.build(["rwkv7-time-mixer", "swiglu"], vocab_size=16, max_length=32, dim=32,
                         backbone=backbone)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]
    return nn.unbox(params)["encoder"]["block_0"]["mixer"]


def test_backbones_keep_the_decay_bonus_and_lora_init():
    """The autoencoder re-draws every Linear N(0, 0.02); the decay, learning-rate bias, bonus,
    key vectors, lerps and LoRA factors are not Linear weights and keep the paper's init."""
    lm, ae = _model_mixer("language-model"), _model_mixer("autoencoder")
    keep = ["decay", "a_bias", "k_k", "k_a", "r_k", "norm_scale", "norm_bias"]
    keep += [f"mu_{n}" for n in "rwkvag"]
    keep += [f"{n}_lora_{s}" for n in ("decay", "a", "gate") for s in ("down", "up")]
    for name in keep:
        np.testing.assert_array_equal(np.asarray(ae[name]), np.asarray(lm[name]), err_msg=name)
    assert np.asarray(ae["decay"]).min() < -5 and np.asarray(ae["decay"]).max() > 0.4
    np.testing.assert_allclose(np.asarray(ae["r_k"]), -0.04, atol=1e-7)
    w = np.asarray(ae["receptance"])
    assert abs(w.std() - 0.02) < 0.004 and not np.array_equal(w, np.asarray(lm["receptance"]))


def test_bfloat16_forward_is_finite_and_close():
    layer, params, x, apply = _layer()
    y32 = np.asarray(apply(params, x)[0])
    layer16 = layers.make_layer("rwkv7-time-mixer", dtype=jnp.bfloat16)
    y16 = jax.jit(lambda p, x: layer16.apply({"params": p}, x))(params, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    y16 = np.asarray(y16, np.float32)
    assert np.all(np.isfinite(y16))
    np.testing.assert_allclose(y16, y32, atol=0.05 * np.abs(y32).max() + 1e-3)

"""Hyena, multi-head Hyena, Hyena experts, the implicit filter and the short convolution.

Oracles are numpy transcriptions of the math of athms/mad-lab (`hyena_filter.py`, `fftconv.py`)
evaluated on our parameters, so the layers are checked against the reference's computation.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import layers
from mad_jax.layers.hyena import Hyena, MultiHeadHyena
from mad_jax.layers.hyena_experts import HyenaExperts, load_balancing_loss, top_k_gates
from mad_jax.layers.hyena_filter import ImplicitFilter, implicit_filter_params
from mad_jax.layers.short_conv import ShortConv, causal_depthwise_conv
from mad_jax.models import count_params

from layer_harness import apply_sown, init_params, random_input

# Oracle comparisons need true float32 matmuls (GPUs default to TF32 for float32).
pytestmark = pytest.mark.usefixtures("full_precision_matmuls")


def _run(layer, params, x):
    """Output, intermediates (module outputs) and sown losses."""
    y, state = apply_sown(layer, params, x)
    return np.asarray(y), state["intermediates"], state.get("losses", {})


# ---------------------------------------------------------------------------------------------
# numpy oracles after the reference


def ref_positional_features(seq_len, emb_dim):
    t = np.linspace(0, 1, seq_len)[:, None]
    w = 2 * math.pi * np.linspace(0, seq_len - 1, seq_len)[:, None] / seq_len
    bands = (emb_dim - 1) // 2
    f = np.linspace(1e-4, bands - 1, bands)[None]
    z = np.exp(-1j * f * w)
    return np.concatenate([t, z.real, z.imag], axis=-1), t


def ref_filter(p, seq_len, channels, num_inner=2):
    """The reference's HyenaFilter on our parameters: z and t sliced to the call's length."""
    z = np.asarray(p["z"], np.float64)[:seq_len]
    t = np.linspace(0, 1, p["z"].shape[0])[:seq_len, None]
    freq = np.asarray(p["sin_freq"], np.float64)
    h = np.sin(freq * (z @ p["in"]["kernel"] + p["in"]["bias"]))
    for i in range(num_inner):
        h = np.sin(freq * (h @ p[f"hidden_{i}"]["kernel"] + p[f"hidden_{i}"]["bias"]))
    h = h @ np.asarray(p["out"]["kernel"], np.float64)
    deltas = np.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, channels)[None]
    return h * np.exp(-t * np.abs(deltas))  # [L, C]


def ref_fftconv(u_BxCxL, h_CxL, d_C):
    seq_len = u_BxCxL.shape[-1]
    n = 2 * seq_len
    h_f = np.fft.rfft(h_CxL, n=n) / n
    u_f = np.fft.rfft(u_BxCxL, n=n)
    y = np.fft.irfft(u_f * h_f, n=n, norm="forward")[..., :seq_len]
    return y + u_BxCxL * d_C[:, None]


def ref_fftconv_heads(k, h, d, q, v, head_dim):
    """The reference's `fftconv_heads` (inputs [B, C, L]; h [C / head_dim, L])."""
    b, c, seq_len = k.shape
    groups = c // head_dim

    def split(a):  # 'b (h d) l -> b d h l'
        return a.reshape(b, groups, head_dim, seq_len).transpose(0, 2, 1, 3)

    kv = split(k)[:, :, None] * split(v)[:, None]  # b d1 d2 h l
    n = 2 * seq_len
    kv_f = np.fft.rfft(kv, n=n) / n
    h_f = np.fft.rfft(h, n=n)
    y = np.fft.irfft(kv_f * h_f, n=n, norm="forward")[..., :seq_len]
    out = y + kv * d[:, None]
    out = (out * split(q)[:, :, None]).sum(axis=1)  # b d2 h l
    return out.transpose(0, 2, 1, 3).reshape(b, groups * head_dim, seq_len)


def ref_short_conv(u_BxLxC, p):
    w = np.asarray(p["kernel"], np.float64)
    k = w.shape[0]
    seq_len = u_BxLxC.shape[1]
    upad = np.pad(u_BxLxC, ((0, 0), (k - 1, 0), (0, 0)))
    return sum(upad[:, j:j + seq_len] * w[j] for j in range(k)) + np.asarray(p["bias"])


def ref_in_short(p, x, groups):
    proj = np.asarray(x, np.float64) @ p["in_proj"]["kernel"] + p["in_proj"]["bias"]
    return ref_short_conv(np.tile(proj, (1, 1, groups)), p["short_filter"])


def ref_out(p, y):
    return y @ np.asarray(p["out_proj"]["kernel"], np.float64) + p["out_proj"]["bias"]


# ---------------------------------------------------------------------------------------------
# short convolution


def naive_short_conv(x, w, b):
    batch, seq_len, channels = x.shape
    k = w.shape[0]
    y = np.zeros((batch, seq_len, channels))
    for t in range(seq_len):
        for j in range(k):
            s = t - (k - 1) + j
            if s >= 0:
                y[:, t] += w[j] * x[:, s]
    return y + b


@pytest.mark.parametrize("seq_len,kernel_size", [(1, 3), (2, 4), (7, 3), (16, 4)])
def test_short_conv_matches_naive_loop_and_is_causal(seq_len, kernel_size):
    conv = ShortConv(kernel_size)
    x = random_input((2, seq_len, 6))
    p = init_params(conv, x)
    assert p["kernel"].shape == (kernel_size, 6) and p["bias"].shape == (6,)
    bound = 1 / math.sqrt(kernel_size)
    assert np.all(np.abs(p["kernel"]) <= bound) and np.all(np.abs(p["bias"]) <= bound)
    y = _run(conv, p, x)[0]
    want = naive_short_conv(np.asarray(x), np.asarray(p["kernel"]), np.asarray(p["bias"]))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    noise = np.asarray(random_input(x.shape, seed=9))
    for t in range(seq_len - 1):
        x2 = np.where(np.arange(seq_len)[None, :, None] > t, noise, np.asarray(x))
        np.testing.assert_array_equal(_run(conv, p, x2)[0][:, :t + 1], y[:, :t + 1])


def test_short_conv_last_tap_is_current_token():
    w = jnp.zeros((3, 1)).at[2, 0].set(1.0)
    x = jnp.arange(5.0).reshape(1, 5, 1)
    np.testing.assert_array_equal(causal_depthwise_conv(x, w), x)
    w = jnp.zeros((3, 1)).at[0, 0].set(1.0)  # first tap: two steps back
    np.testing.assert_array_equal(np.asarray(causal_depthwise_conv(x, w))[0, :, 0],
                                  [0, 0, 0, 1, 2])


# ---------------------------------------------------------------------------------------------
# implicit filter


@pytest.mark.parametrize("seq_len", [1, 2, 5, 17, 32])
def test_implicit_filter_shape_any_length(seq_len):
    filt = ImplicitFilter(24, ffn_width=8)
    variables = filt.init(jax.random.key(0), seq_len)
    h = filt.apply(variables, seq_len)
    assert h.shape == (seq_len, 24) and h.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(h)))
    assert nn.unbox(variables["params"]["z"]).shape == (seq_len, 3)  # no max_length: init length


def test_implicit_filter_params_and_matches_reference():
    filt = ImplicitFilter(40, max_length=32, ffn_width=6, emb_dim=5)
    p = nn.unbox(filt.init(jax.random.key(3), 32)["params"])
    assert (count_params(p) == implicit_filter_params(40, 6, max_length=32, emb_dim=5)
            == 32 * 5 + 6 + 6 * 6 + 2 * 7 * 6 + 6 * 40)
    # z starts as the reference's PositionalEmbedding at horizon max_length.
    np.testing.assert_allclose(np.asarray(p["z"]), ref_positional_features(32, 5)[0], atol=1e-6)
    # z is a trained parameter: the filter follows it (oracle on perturbed z, shorter call).
    p = {**p, "z": p["z"] + 0.3 * random_input(p["z"].shape, seed=4)}
    np.testing.assert_allclose(np.asarray(filt.apply({"params": p}, 20)),
                               ref_filter(p, 20, 40), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_implicit_filter_decays(seed):
    seq_len = 32
    filt = ImplicitFilter(64, ffn_width=4)
    h = np.abs(np.asarray(filt.apply(filt.init(jax.random.key(seed), seq_len), seq_len)))
    per_tap = h.mean(axis=1)
    assert per_tap[seq_len // 2:].mean() < 0.5 * per_tap[:seq_len // 2].mean()
    assert per_tap[-1] < per_tap[0]
    # Without the modulation the same network does not decay like that: the window does it.
    free = ImplicitFilter(64, ffn_width=4, modulate=False)
    g = np.abs(np.asarray(free.apply(free.init(jax.random.key(seed), seq_len), seq_len)))
    assert h[-1].mean() < 0.1 * g[-1].mean()


@pytest.mark.parametrize("max_length", [None, 32])
def test_implicit_filter_shorter_calls_are_prefixes_and_longer_ones_errors(max_length):
    filt = ImplicitFilter(8, max_length=max_length, ffn_width=4)
    variables = filt.init(jax.random.key(0), 32)  # without max_length, z takes the init length
    assert nn.unbox(variables["params"]["z"]).shape == (32, 3)
    full = np.asarray(filt.apply(variables, 32))
    # atol at float32 resolution of the filter's scale, for taps that cross zero.
    np.testing.assert_allclose(np.asarray(filt.apply(variables, 11)), full[:11], rtol=1e-6,
                               atol=1e-6 * np.abs(full).max())
    with pytest.raises(ValueError, match="exceeds the Hyena filter's max_length 32"):
        filt.apply(variables, 33)


# ---------------------------------------------------------------------------------------------
# Hyena


def hyena_params(dim, max_length, order=2, inner_factor=4, groups=4, k=3, width=4, emb=3):
    inner = inner_factor * dim
    proj = (order + 1) * inner // groups
    return (dim * proj + proj                                  # in_proj
            + (order + 1) * inner * (k + 1)                    # short filter
            + max_length * emb                                 # filter positional embedding z
            + width + (emb + 1) * width + 2 * (width + 1) * width + width * (order - 1) * inner
            + (order - 1) * inner                              # skip D
            + inner * dim + dim)                               # out_proj


@pytest.mark.parametrize("config,dim", [({}, 128), ({"order": 3, "inner_factor": 2,
                                                    "proj_groups": 1, "filter_order": 8}, 32)])
def test_hyena_param_count(config, dim):
    layer = layers.make_layer("hyena", max_length=24, **config)
    p = init_params(layer, random_input((1, 8, dim)))
    kw = {"order": config.get("order", 2), "inner_factor": config.get("inner_factor", 4),
          "groups": config.get("proj_groups", 4), "width": config.get("filter_order", 4)}
    assert count_params(p) == hyena_params(dim, 24, **kw)
    assert p["filter"]["z"].shape == (24, 3)


def test_hyena_default_config_and_state_size():
    layer = layers.make_layer("hyena")
    assert (layer.order, layer.inner_factor, layer.proj_groups, layer.short_filter_order,
            layer.filter_order) == (2, 4, 4, 3, 4)
    # (order-1) * I * L long-conv history + (K-1) * (order+1) I / groups short-filter tail.
    assert layer.state_size(128, 100) == 512 * 100 + 2 * 384
    layer3 = layers.make_layer("hyena", order=3, inner_factor=1, proj_groups=1)
    assert layer3.state_size(32, 10) == 2 * 32 * 10 + 2 * 4 * 32


def test_hyena_matches_reference_operator():
    layer = layers.make_layer("hyena", kernel_impl="xla", max_length=16)
    x = random_input((2, 12, 128))
    p = init_params(layer, x)
    z = p["filter"]["z"] + 0.2 * random_input((16, 3), seed=6)
    p = {**p, "filter": {**p["filter"], "z": z}}
    y, inter, _ = _run(layer, p, x)
    uc = ref_in_short(p, x, groups=4)
    np.testing.assert_allclose(np.asarray(inter["short_filter"]["__call__"][0]), uc,
                               rtol=1e-4, atol=1e-4)
    h = ref_filter(p["filter"], 12, 512)
    np.testing.assert_allclose(np.asarray(inter["filter"]["__call__"][0]), h, rtol=1e-4, atol=1e-6)
    x0, x1, v = np.split(uc.transpose(0, 2, 1), 3, axis=1)  # b d l, as the reference
    vv = ref_fftconv(v * x1, h.T, np.asarray(p["bias"], np.float64))
    want = ref_out(p, (vv * x0).transpose(0, 2, 1))
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["hyena", "mh-hyena", "hyena-experts"])
@pytest.mark.parametrize("seq_len", [1, 7])
def test_short_and_odd_lengths_are_causal(name, seq_len):
    layer = layers.make_layer(name, kernel_impl="xla")
    x = random_input((2, seq_len, 32))
    p = init_params(layer, x)
    y, _, _ = _run(layer, p, x)
    assert y.shape == x.shape and np.all(np.isfinite(y))
    if seq_len > 1:
        x2 = x.at[:, 4:].set(random_input(x[:, 4:].shape, seed=5))
        np.testing.assert_allclose(_run(layer, p, x2)[0][:, :4], y[:, :4], rtol=1e-5, atol=1e-5)


def test_hyena_bfloat16_compute():
    layer = layers.make_layer("hyena", dtype=jnp.bfloat16)
    x = random_input((1, 8, 32))
    p = init_params(layer, x)
    y = jax.jit(layer.apply)({"params": p}, x)
    assert y.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y, np.float32)))


def test_hyena_rejects_bad_groups():
    with pytest.raises(ValueError, match="proj_groups"):
        layers.make_layer("hyena", proj_groups=5).init(jax.random.key(0), random_input((1, 4, 8)))


# ---------------------------------------------------------------------------------------------
# multi-head Hyena


def mh_hyena_params(dim, max_length, heads=16, inner_factor=1, groups=4, k=3, width=2, emb=3):
    inner = inner_factor * dim
    proj = 3 * inner // groups
    return (dim * proj + proj + 3 * inner * (k + 1)
            + max_length * emb + width + (emb + 1) * width + 2 * (width + 1) * width + width * heads
            + heads + inner * dim + dim)


@pytest.mark.parametrize("config,dim", [({}, 128), ({"num_heads": 4, "inner_factor": 2,
                                                    "proj_groups": 1, "filter_order": 8}, 32)])
def test_mh_hyena_param_count(config, dim):
    layer = layers.make_layer("mh-hyena", **config)
    p = init_params(layer, random_input((1, 8, dim)))
    kw = {"heads": config.get("num_heads", 16), "inner_factor": config.get("inner_factor", 1),
          "groups": config.get("proj_groups", 4), "width": config.get("filter_order", 2)}
    assert count_params(p) == mh_hyena_params(dim, 8, **kw)


def test_mh_hyena_default_config_and_state_size():
    layer = layers.make_layer("mh-hyena")
    assert (layer.num_heads, layer.inner_factor, layer.filter_order, layer.order) == (16, 1, 2, 2)
    # k and value histories 2 I L + short-filter tail (K-1) * 3 I / groups.
    assert layer.state_size(128, 100) == 2 * 128 * 100 + 2 * 96


@pytest.mark.parametrize("num_heads", [8, 16])
def test_mh_hyena_matches_reference_fftconv_heads(num_heads):
    """Our heads of width d = I / H are the reference's fftconv_heads groups with head_dim = d."""
    layer = layers.make_layer("mh-hyena", num_heads=num_heads, kernel_impl="xla", max_length=13)
    x = random_input((2, 10, 128))
    p = init_params(layer, x)
    y, inter, _ = _run(layer, p, x)
    uc = ref_in_short(p, x, groups=4).transpose(0, 2, 1)
    h = ref_filter(p["filter"], 10, num_heads)
    np.testing.assert_allclose(np.asarray(inter["filter"]["__call__"][0]), h, rtol=1e-4, atol=1e-6)
    x1, x2, v = np.split(uc, 3, axis=1)
    out = ref_fftconv_heads(v, h.T, np.asarray(p["bias"], np.float64), q=x1, v=x2,
                            head_dim=128 // num_heads)
    np.testing.assert_allclose(y, ref_out(p, out.transpose(0, 2, 1)), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Hyena experts


def experts_params(dim, max_length, experts=8, width=16, order=2, k=3, fw=16, emb=3):
    total = (order + 1) * experts * width
    return (dim * total + total + total * (k + 1)
            + max_length * emb + fw + (emb + 1) * fw + 2 * (fw + 1) * fw
            + fw * (order - 1) * experts * width
            + (order - 1) * experts * width
            + dim * experts + experts + width * dim + dim)


@pytest.mark.parametrize("config,dim", [({}, 128), ({"num_experts": 4, "active_experts": 1,
                                                    "expert_width": 8, "filter_order": 4}, 32)])
def test_hyena_experts_param_count(config, dim):
    layer = layers.make_layer("hyena-experts", max_length=20, **config)
    p = init_params(layer, random_input((1, 8, dim)))
    kw = {"experts": config.get("num_experts", 8), "width": config.get("expert_width", 16),
          "fw": config.get("filter_order", 16)}
    assert count_params(p) == experts_params(dim, 20, **kw)


def test_hyena_experts_state_size():
    layer = layers.make_layer("hyena-experts")
    assert (layer.num_experts, layer.active_experts, layer.expert_width) == (8, 2, 16)
    assert layer.state_size(128, 100) == 128 * 100 + 2 * 384


def test_top_k_gates():
    logits = random_input((2, 5, 8), seed=3)
    gates, idx = top_k_gates(logits, 2)
    gates = np.asarray(gates)
    assert np.all((gates > 0).sum(-1) == 2)
    np.testing.assert_allclose(gates.sum(-1), 1.0, rtol=1e-6)
    top2 = np.argsort(-np.asarray(logits), axis=-1)[..., :2]
    np.testing.assert_array_equal(np.sort(np.asarray(idx), -1), np.sort(top2, -1))
    l2 = np.take_along_axis(np.asarray(logits), top2, -1)
    want = np.exp(l2) / np.exp(l2).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.take_along_axis(gates, top2, -1), want, rtol=1e-5)


def test_hyena_experts_uses_exactly_top2_experts_per_token():
    layer = layers.make_layer("hyena-experts", kernel_impl="xla")
    x = random_input((2, 16, 128))
    p = init_params(layer, x)
    y, inter, _ = _run(layer, p, x)
    logits = np.asarray(inter["router"]["__call__"][0])
    top2 = np.argsort(-logits, axis=-1)[..., :2]
    chosen = np.zeros(logits.shape, bool)
    np.put_along_axis(chosen, top2, True, axis=-1)
    assert np.all(chosen.sum(-1) == 2)
    # Perturb one expert's own parameters (its skip D; channel c belongs to expert c % E): only
    # the tokens routed to it may change, and all of those do.
    for expert in range(8):
        bias = np.asarray(p["bias"]).copy()
        bias[expert::8] += 3.0
        y2, _, _ = _run(layer, {**p, "bias": jnp.asarray(bias)}, x)
        changed = np.any(np.abs(y2 - y) > 1e-5, axis=-1)
        np.testing.assert_array_equal(changed, chosen[..., expert],
                                      err_msg=f"expert {expert} contributes outside its tokens")


def test_hyena_experts_sows_positive_aux_loss():
    layer = layers.make_layer("hyena-experts", kernel_impl="xla")
    x = random_input((2, 16, 128))
    p = init_params(layer, x)
    _, inter, losses = _run(layer, p, x)
    (aux,) = losses["aux_loss"]
    assert aux.shape == () and float(aux) > 0
    logits = inter["router"]["__call__"][0]
    _, idx = top_k_gates(logits, 2)
    np.testing.assert_allclose(float(aux), 0.01 * float(load_balancing_loss(logits, idx)),
                               rtol=1e-6)
    # Balanced routing gives exactly the coefficient; collapsed routing gives more.
    uniform = jnp.zeros((1, 8, 8))
    idx_bal = jnp.array([[[2 * i % 8, (2 * i + 1) % 8] for i in range(8)]])
    assert float(load_balancing_loss(uniform, idx_bal)) == pytest.approx(1.0)
    skewed = jnp.zeros((1, 8, 8)).at[..., :2].set(5.0)
    _, idx_skew = top_k_gates(skewed, 2)
    assert float(load_balancing_loss(skewed, idx_skew)) > 3.0


def ref_paper_routing(logits, k):
    """The reference's routing: logits below the k-th largest set to 0, softmax over all."""
    kth = np.sort(logits, axis=-1)[..., -k][..., None]
    kept = np.where(logits < kth, 0.0, logits)
    e = np.exp(kept - kept.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_hyena_experts_paper_routing_matches_reference_operator():
    layer = layers.make_layer("hyena-experts", routing="paper", kernel_impl="xla", max_length=12)
    x = random_input((2, 12, 128))
    p = init_params(layer, x)
    p = {**p, "router": {**p["router"], "bias": 0.3 * random_input((8,), seed=2)}}
    y, inter, losses = _run(layer, p, x)
    assert not losses  # the reference has no balancing loss
    logits = np.asarray(x, np.float64) @ p["router"]["kernel"] + p["router"]["bias"]
    weights = ref_paper_routing(logits, 2)
    assert np.all(weights > 0)  # every expert keeps a share, unlike top-k routing
    uc = ref_in_short(p, x, groups=1).transpose(0, 2, 1)
    x0, x1, v = np.split(uc, 3, axis=1)
    h = ref_filter(p["filter"], 12, 128)
    yy = (ref_fftconv(v * x1, h.T, np.asarray(p["bias"], np.float64)) * x0).transpose(0, 2, 1)
    mixed = (yy.reshape(2, 12, 16, 8) * weights[:, :, None, :]).sum(-1)  # channel = d * E + e
    np.testing.assert_allclose(y, ref_out(p, mixed), rtol=1e-4, atol=1e-4)


def test_hyena_experts_rejects_unknown_routing():
    with pytest.raises(ValueError, match="unknown routing 'softmax'"):
        layers.make_layer("hyena-experts", routing="softmax").init(jax.random.key(0),
                                                                   random_input((1, 4, 32)))


def test_hyena_experts_gradient_reaches_router():
    layer = layers.make_layer("hyena-experts", kernel_impl="xla")
    x = random_input((1, 8, 32))
    p = init_params(layer, x)

    def loss(p):
        y, state = layer.apply({"params": p}, x, mutable=["losses"])
        return jnp.mean(y ** 2) + sum(jax.tree_util.tree_leaves(state["losses"]))

    g = jax.jit(jax.grad(loss))(p)
    assert np.any(np.asarray(g["router"]["kernel"]) != 0)


def test_accounting_methods_read_only_config():
    for cls, name in ((Hyena, "hyena"), (MultiHeadHyena, "mh-hyena"),
                      (HyenaExperts, "hyena-experts")):
        layer = layers.make_layer(name)
        assert isinstance(layer, cls)
        assert layer.flops(128, 256) > layer.flops(128, 128) > 0
        assert layer.state_size(128, 256) > layer.state_size(128, 128) > 0

"""Mamba-2: parameter count, state and FLOPs against hand formulas, the dt / A / D initialisation
(kept by both backbones), and the chunked layer against a float64 token-by-token recurrence."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import layers, models

from layer_harness import random_input, run_jitted

CONFIG = {"headdim": 8, "n_groups": 2, "chunk_size": 8}  # width 32: 8 heads in 2 groups
DIM = 32

# Oracle comparisons need true float32 matmuls (GPUs default to TF32 for float32).
pytestmark = pytest.mark.usefixtures("full_precision_matmuls")


def mamba2_params(dim, d_state=4, d_conv=4, expand=2, headdim=16, n_groups=1):
    inner = expand * dim
    heads = inner // headdim
    conv_channels = inner + 2 * n_groups * d_state
    return (dim * (inner + conv_channels + heads)   # in_proj (z, x, B, C, dt), no bias
            + d_conv * conv_channels + conv_channels  # depthwise conv + bias
            + 3 * heads                               # dt_bias, A_log, D
            + inner                                   # gated RMSNorm weight
            + inner * dim)                            # out_proj, no bias


def test_param_count_state_and_flops_formulas():
    layer = layers.make_layer("mamba2")
    assert (layer.d_state, layer.d_conv, layer.expand, layer.headdim, layer.n_groups) == \
        (4, 4, 2, 16, 1)
    shapes = jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((1, 8, 128)))["params"]
    assert models.count_params(shapes) == mamba2_params(128) == 103_000
    small = layers.make_layer("mamba2", **CONFIG)
    shapes = jax.eval_shape(small.init, jax.random.key(0), jnp.zeros((1, 8, DIM)))["params"]
    assert models.count_params(shapes) == mamba2_params(DIM, headdim=8, n_groups=2)

    # I*N SSM state + (d_conv - 1) * (I + 2GN) conv tail, whatever the length.
    assert layer.state_size(128, 10) == layer.state_size(128, 1024) == 256 * 4 + 3 * (256 + 8)
    assert small.state_size(DIM, 7) == 64 * 4 + 3 * (64 + 16)

    d, length, inner, heads, n, conv = 128, 1024, 256, 16, 4, 264
    want = (2 * length * d * (inner + conv + heads)   # in_proj
            + 2 * 4 * length * conv + length * conv   # conv, SiLU
            + 4 * length * heads                      # dt bias + softplus, dt A + exp
            + length * heads * n                      # dt B
            + 5 * length * inner * n                  # recurrence
            + 8 * length * inner                      # skip 2, gate 2, RMSNorm 4
            + 2 * length * inner * d)                 # out_proj
    assert layer.flops(d, length) == want
    assert layer.flops(d, 2 * length) == 2 * want   # linear in L



@pytest.fixture(scope="module")
def backbone_params():
    """The mixer's parameters in [mamba2, swiglu] under both backbones (dim 64: 8 heads), from
    one compiled program."""
    backbones = ("language-model", "autoencoder")
    built = [models.build(["mamba2", "swiglu"], vocab_size=16, max_length=32, dim=64,
                          backbone=b) for b in backbones]

    def program(tokens):
        return [nn.unbox(m.init(jax.random.key(1), tokens)["params"]) for m in built]

    params = run_jitted(program, jnp.zeros((2, 32), jnp.int32))
    return {b: p["encoder"]["block_0"]["mixer"] for b, p in zip(backbones, params)}


@pytest.mark.parametrize("backbone", ["language-model", "autoencoder"])
def test_special_parameters_keep_their_init_in_both_backbones(backbone_params, backbone):
    mixer = backbone_params[backbone]
    dt = np.asarray(jax.nn.softplus(mixer["dt_bias"]))
    assert dt.shape == (8,)
    assert np.all(dt >= 1e-3 * (1 - 1e-5)) and np.all(dt <= 1e-1 * (1 + 1e-5))
    assert len(np.unique(dt)) == 8  # drawn, one per head
    a = np.exp(np.asarray(mixer["A_log"]))
    assert np.all(a >= 1 - 1e-5) and np.all(a <= 16 + 1e-4) and len(np.unique(a)) == 8
    np.testing.assert_array_equal(np.asarray(mixer["D"]), 1.0)
    np.testing.assert_array_equal(np.asarray(mixer["norm_weight"]), 1.0)
    lm = backbone_params["language-model"]
    for name in ("dt_bias", "A_log", "D"):
        np.testing.assert_array_equal(np.asarray(mixer[name]), np.asarray(lm[name]))
    w = np.asarray(mixer["in_proj"]["kernel"])
    if backbone == "autoencoder":  # the Linear weights are re-drawn N(0, 0.02)
        assert abs(w.std() - 0.02) < 0.003 and np.abs(w).max() > 2.5 * 0.02
    else:  # PyTorch's Linear default, U(+-1/sqrt(64))
        assert np.abs(w).max() <= 1 / 8 and np.abs(w).max() > 0.9 / 8


def step_by_step_float64(p, u, *, d_state, headdim, n_groups, eps=1e-5):
    """The layer token by token in float64: the conv state, then per head
    S_t = exp(dt A) S_{t-1} + dt x B^T and y_t = S_t C_t + D x_t."""
    f = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    silu = lambda a: a / (1 + np.exp(-a))  # noqa: E731
    batch, seq_len, _ = u.shape
    w_conv = f["conv1d"]["kernel"]  # [K, C]; tap K-1 is the current token
    heads = f["A_log"].shape[0]
    inner = heads * headdim
    heads_per_group = heads // n_groups
    conv_state = np.zeros((batch,) + w_conv.shape)
    ssm_BxHxPxN = np.zeros((batch, heads, headdim, d_state))
    a_H = -np.exp(f["A_log"])
    out = []
    for t in range(seq_len):
        proj = np.asarray(u[:, t], np.float64) @ f["in_proj"]["kernel"]
        z, xbc, dt = np.split(proj, [inner, proj.shape[-1] - heads], axis=-1)
        conv_state = np.concatenate([conv_state[:, 1:], xbc[:, None]], axis=1)
        xbc = silu((conv_state * w_conv).sum(1) + f["conv1d"]["bias"])
        x, b, c = np.split(xbc, [inner, inner + n_groups * d_state], axis=-1)
        dt = np.log1p(np.exp(dt + f["dt_bias"]))  # [B, H]
        x_BxHxP = x.reshape(batch, heads, headdim)
        group = np.arange(heads) // heads_per_group
        b_BxHxN = b.reshape(batch, n_groups, d_state)[:, group]
        c_BxHxN = c.reshape(batch, n_groups, d_state)[:, group]
        ssm_BxHxPxN = (np.exp(dt * a_H)[..., None, None] * ssm_BxHxPxN
                       + (dt[..., None] * x_BxHxP)[..., None] * b_BxHxN[:, :, None, :])
        y = np.einsum("bhpn,bhn->bhp", ssm_BxHxPxN, c_BxHxN) + f["D"][:, None] * x_BxHxP
        y = y.reshape(batch, inner) * silu(z)
        y_g = y.reshape(batch, n_groups, inner // n_groups)
        y = (y_g / np.sqrt(np.mean(y_g ** 2, -1, keepdims=True) + eps)).reshape(batch, inner)
        out.append((y * f["norm_weight"]) @ f["out_proj"]["kernel"])
    return np.stack(out, 1)


LENGTHS = (16, 21)  # 2 chunks of 8; 2 chunks and a partial one


@pytest.fixture(scope="module")
def small_layer_outputs():
    """One program: init, the float32 forward at each length, and a bf16 forward."""
    layer = layers.make_layer("mamba2", **CONFIG)
    layer16 = layers.make_layer("mamba2", dtype=jnp.bfloat16, **CONFIG)
    xs = [random_input((2, n, DIM), seed=n) for n in LENGTHS]

    def program(xs):
        params = nn.unbox(layer.init(jax.random.key(1), xs[0])["params"])
        # Stronger, spread decays than at init, so the state carries and forgets across chunks.
        params = dict(params, dt_bias=params["dt_bias"] + 3.0)
        ys = [layer.apply({"params": params}, x) for x in xs]
        return params, ys, layer16.apply({"params": params}, xs[1])

    params, ys, y16 = run_jitted(program, xs)
    return params, dict(zip(LENGTHS, zip(xs, ys))), y16


@pytest.mark.parametrize("seq_len", LENGTHS)
def test_chunked_layer_equals_float64_recurrence(small_layer_outputs, seq_len):
    params, outputs, _ = small_layer_outputs
    x, y = outputs[seq_len]
    want = step_by_step_float64(params, np.asarray(x), d_state=4, headdim=8, n_groups=2)
    np.testing.assert_allclose(np.asarray(y), want, rtol=2e-5, atol=2e-5)


def test_bf16_forward_is_finite(small_layer_outputs):
    y16 = small_layer_outputs[2]
    assert y16.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y16, np.float32)))


def test_headdim_must_divide_inner_width():
    layer = layers.make_layer("mamba2", headdim=48)
    with pytest.raises(ValueError, match="headdim"):
        jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((1, 4, 128)))

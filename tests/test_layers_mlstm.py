"""mLSTM: the stabilised chunked cell against float64 recurrences (stabilised, and the plain
unstabilised definition), the block against a float64 token-by-token transcription, parameter
count / state / FLOPs against hand formulas, and the gate / skip / norm init kept by both
backbones."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import layers, models
from mad_jax.layers.mlstm import mlstm_chunked, mlstm_recurrent

from layer_harness import random_input, run_jitted

CONFIG = {"num_heads": 4, "chunk_size": 8}  # width 32: inner 64, 4 heads of 16
DIM = 32
LENGTHS = (16, 21)  # 2 chunks of 8; 2 chunks and a partial one

# Oracle comparisons need true float32 matmuls (GPUs default to TF32 for float32).
pytestmark = pytest.mark.usefixtures("full_precision_matmuls")


def _log_sigmoid(a):
    return -np.logaddexp(0.0, -a)


# ---- the cell ------------------------------------------------------------------------------

def cell_float64(q, k, v, i_pre, f_pre, eps=1e-6, stabilised=True):
    """The cell step by step in float64 (q, k, v [B, H, L, d]; gates [B, H, L]).

    stabilised: the module's recurrence from m_0 = -inf. Otherwise the paper's plain definition,
    C_t = f C + exp(i~) v k^T, n_t = f n + exp(i~) k, h_t = C q / (max(|n^T q|, 1) + eps)."""
    q, k, v, i_pre, f_pre = (np.asarray(a, np.float64) for a in (q, k, v, i_pre, f_pre))
    batch, heads, seq_len, d = q.shape
    k = k / np.sqrt(d)
    c = np.zeros((batch, heads, v.shape[-1], d))
    n = np.zeros((batch, heads, d))
    m = np.full((batch, heads), -np.inf)
    out = []
    for t in range(seq_len):
        log_f, i_t = _log_sigmoid(f_pre[:, :, t]), i_pre[:, :, t]
        if stabilised:
            m_new = np.maximum(log_f + m, i_t)
            forget, inp, floor = np.exp(log_f + m - m_new), np.exp(i_t - m_new), np.exp(-m_new)
            m = m_new
        else:
            forget, inp, floor = np.exp(log_f), np.exp(i_t), 1.0
        c = forget[..., None, None] * c + inp[..., None, None] * np.einsum(
            "bhv,bhk->bhvk", v[:, :, t], k[:, :, t])
        n = forget[..., None] * n + inp[..., None] * k[:, :, t]
        num = np.einsum("bhvk,bhk->bhv", c, q[:, :, t])
        qn = np.einsum("bhk,bhk->bh", n, q[:, :, t])
        out.append(num / (np.maximum(np.abs(qn), floor) + eps)[..., None])
    return np.stack(out, 2)


def _cell_inputs(seq_len, seed, gate_scale, batch=2, f_mean=2.0):
    """q, k, v [B, 3, L, 8]; input-gate pre-activations in gate_scale * [-0.2, 1], forget ones
    ~ N(f_mean, 4^2): from strongly closed to open."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((batch, 3, seq_len, 8)).astype(np.float32) for _ in range(3))
    i_pre = (gate_scale * rng.uniform(-0.2, 1.0, (batch, 3, seq_len))).astype(np.float32)
    f_pre = (rng.standard_normal((batch, 3, seq_len)) * 4.0 + f_mean).astype(np.float32)
    return q, k, v, i_pre, f_pre


# 1000 steps of mostly closed forget gates: the summed log forget gate reaches about -3000, where
# float32 keeps it to ~2e-4 (the stabiliser is computed from it).
LONG = (1000, "long")


@pytest.fixture(scope="module")
def cell_outputs():
    """Chunked (chunks of 8) and recurrent cells, one program, at each length, for gates up to
    exp(100) (far past float32 without the stabiliser) and moderate gates (i~ in [-0.6, 3])."""
    cases = {(n, scale): _cell_inputs(n, seed=n, gate_scale=scale)
             for n in LENGTHS for scale in (100.0, 3.0)}
    cases[LONG] = _cell_inputs(LONG[0], seed=5, gate_scale=30.0, batch=1, f_mean=-2.0)

    def program(cases):
        outputs = {key: (mlstm_chunked(*args, chunk_size=8), mlstm_recurrent(*args))
                   for key, args in cases.items()}
        # Gradients of a fixed projection of h wrt q, k, v and both gates, through each form.
        args = cases[(LENGTHS[1], 3.0)]
        w = jnp.cos(jnp.arange(args[2].size, dtype=jnp.float32)).reshape(args[2].shape)
        grads = [jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a) * w), argnums=range(5))(*args)
                 for fn in (functools.partial(mlstm_chunked, chunk_size=8), mlstm_recurrent)]
        return outputs, grads

    outputs, grads = run_jitted(program, cases)
    return cases, outputs, grads


@pytest.mark.parametrize("seq_len", LENGTHS)
@pytest.mark.parametrize("gate_scale", [100.0, 3.0])
def test_chunked_cell_equals_float64_recurrence(cell_outputs, seq_len, gate_scale):
    cases, outputs, _ = cell_outputs
    args = cases[(seq_len, gate_scale)]
    chunked, recurrent = (np.asarray(a) for a in outputs[(seq_len, gate_scale)])
    want = cell_float64(*args)
    assert np.all(np.isfinite(chunked))
    scale = np.abs(want).max()
    np.testing.assert_allclose(chunked, want, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(recurrent, want, rtol=1e-4, atol=1e-5 * scale)


def test_long_strongly_forgetting_sequence_equals_float64_recurrence(cell_outputs):
    cases, outputs, _ = cell_outputs
    want = cell_float64(*cases[LONG])
    chunked, recurrent = (np.asarray(a) for a in outputs[LONG])
    scale = np.abs(want).max()
    np.testing.assert_allclose(chunked, want, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(recurrent, want, rtol=1e-4, atol=1e-5 * scale)


def test_chunked_cell_gradients_equal_the_recurrent_ones(cell_outputs):
    """The chunked form holds the stabiliser constant in its gradient; the step-by-step one
    differentiates through it: the same gradients (m moves h only through eps)."""
    chunked, recurrent = cell_outputs[2]
    for name, g_chunked, g_recurrent in zip(("q", "k", "v", "i", "f"), chunked, recurrent):
        g_chunked, g_recurrent = np.asarray(g_chunked), np.asarray(g_recurrent)
        assert np.any(g_recurrent != 0), name
        np.testing.assert_allclose(g_chunked, g_recurrent, rtol=1e-4,
                                   atol=1e-5 * np.abs(g_recurrent).max(), err_msg=name)


@pytest.mark.parametrize("seq_len", LENGTHS)
def test_stabilised_cell_is_the_plain_definition(cell_outputs, seq_len):
    """Where exp(i~) does not overflow, the stabilised cell is the unstabilised one (eps aside)."""
    cases, outputs, _ = cell_outputs
    args = cases[(seq_len, 3.0)]
    chunked = np.asarray(outputs[(seq_len, 3.0)][0])
    plain = cell_float64(*args, eps=0.0, stabilised=False)
    np.testing.assert_allclose(chunked, plain, rtol=1e-4, atol=1e-4)


# ---- the block -----------------------------------------------------------------------------

def block_float64(p, x, num_heads, blocksize=4, norm_eps=1e-5, eps=1e-6):
    """The block token by token in float64: conv state, block-diagonal maps, gates, cell step."""
    f = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    silu = lambda a: a / (1 + np.exp(-a))  # noqa: E731
    batch, seq_len, _ = x.shape
    w_conv = f["conv1d"]["kernel"]  # [K, I]; tap K-1 is the current token
    inner = w_conv.shape[1]
    d = inner // num_heads

    def blockdiag(name, a):
        w = f[name]["kernel"]  # [I / b, b, b]
        return np.einsum("bni,nio->bno", a.reshape(batch, -1, blocksize), w).reshape(batch, inner)

    conv_state = np.zeros((batch,) + w_conv.shape)
    c = np.zeros((batch, num_heads, d, d))
    n = np.zeros((batch, num_heads, d))
    m = np.full((batch, num_heads), -np.inf)
    out = []
    for t in range(seq_len):
        up = np.asarray(x[:, t], np.float64) @ f["proj_up"]["kernel"]
        xm, z = up[:, :inner], up[:, inner:]
        conv_state = np.concatenate([conv_state[:, 1:], xm[:, None]], axis=1)
        xc = silu((conv_state * w_conv).sum(1) + f["conv1d"]["bias"])
        q, k, v = blockdiag("q_proj", xc), blockdiag("k_proj", xc), blockdiag("v_proj", xm)
        gate_in = np.concatenate([q, k, v], -1)
        i_t = gate_in @ f["igate"]["kernel"] + f["igate"]["bias"]
        log_f = _log_sigmoid(gate_in @ f["fgate"]["kernel"] + f["fgate"]["bias"])
        q, k, v = (a.reshape(batch, num_heads, d) for a in (q, k / np.sqrt(d), v))
        m_new = np.maximum(log_f + m, i_t)
        forget, inp = np.exp(log_f + m - m_new), np.exp(i_t - m_new)
        m = m_new
        c = forget[..., None, None] * c + inp[..., None, None] * v[..., :, None] * k[..., None, :]
        n = forget[..., None] * n + inp[..., None] * k
        qn = np.einsum("bhk,bhk->bh", n, q)
        h = np.einsum("bhvk,bhk->bhv", c, q) / (np.maximum(np.abs(qn), np.exp(-m)) + eps)[..., None]
        h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + norm_eps)
        h = h.reshape(batch, inner) * f["norm_weight"] + f["learnable_skip"] * xc
        out.append((h * silu(z)) @ f["proj_down"]["kernel"])
    return np.stack(out, 1)


@pytest.fixture(scope="module")
def block_outputs():
    """One program: init, gates moved off their init (zero weights would leave every gate
    constant), the float32 forward at each length, and a bf16 forward."""
    layer = layers.make_layer("mlstm", **CONFIG)
    layer16 = layers.make_layer("mlstm", dtype=jnp.bfloat16, **CONFIG)
    xs = [random_input((2, n, DIM), seed=n) for n in LENGTHS]

    def program(xs):
        params = nn.unbox(layer.init(jax.random.key(1), xs[0])["params"])
        keys = jax.random.split(jax.random.key(2), 2)
        for key, gate, std in zip(keys, ("igate", "fgate"), (1.0, 0.5)):
            kernel = params[gate]["kernel"]
            params[gate] = dict(params[gate],
                                kernel=std * jax.random.normal(key, kernel.shape) / 8)
        ys = [layer.apply({"params": params}, x) for x in xs]
        return params, ys, layer16.apply({"params": params}, xs[1])

    params, ys, y16 = run_jitted(program, xs)
    return params, dict(zip(LENGTHS, zip(xs, ys))), y16


@pytest.mark.parametrize("seq_len", LENGTHS)
def test_block_equals_float64_step_by_step(block_outputs, seq_len):
    params, outputs, _ = block_outputs
    x, y = outputs[seq_len]
    want = block_float64(params, np.asarray(x), num_heads=4)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)


def test_bf16_forward_is_finite(block_outputs):
    y16 = block_outputs[2]
    assert y16.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y16, np.float32)))


# ---- accounting ----------------------------------------------------------------------------

def mlstm_params(dim, proj_factor=2, num_heads=32, conv_kernel=4, blocksize=4):
    inner = proj_factor * dim
    return (dim * 2 * inner                      # proj_up, no bias
            + conv_kernel * inner + inner        # depthwise conv + bias
            + 3 * inner * blocksize              # q, k, v block-diagonal maps
            + 2 * (3 * inner * num_heads + num_heads)  # input and forget gates
            + 2 * inner                          # norm weight, learnable skip
            + inner * dim)                       # proj_down, no bias


def test_param_count_state_and_flops_formulas():
    layer = layers.make_layer("mlstm")
    assert (layer.proj_factor, layer.num_heads, layer.conv_kernel, layer.qkv_blocksize) == \
        (2.0, 32, 4, 4)
    shapes = jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((1, 8, 128)))["params"]
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes)) == \
        mlstm_params(128) == 152_384

    # H d^2 memory + H d normaliser + H stabiliser + 3 I conv tail, whatever the length.
    assert layer.state_size(128, 10) == layer.state_size(128, 1024) == \
        32 * 8 * 8 + 32 * 8 + 32 + 3 * 256
    assert layers.make_layer("mlstm", **CONFIG).state_size(DIM, 7) == \
        4 * 16 * 16 + 64 + 4 + 3 * 64

    d, length, inner, heads, hd = 128, 1024, 256, 32, 8
    want = (2 * length * d * 2 * inner                # proj_up
            + 2 * 4 * length * inner + length * inner  # conv, SiLU
            + 3 * 2 * length * inner * 4              # q, k, v
            + 2 * 2 * length * 3 * inner * heads      # gates
            + 11 * length * heads                     # gates, stabiliser, normaliser
            + 5 * length * inner * (hd + 1)           # recurrence on [v, 1]
            + 13 * length * inner                     # key scaling 2, division 1, norm 6,
                                                      # skip 2, output gate 2
            + 2 * length * inner * d)                 # proj_down
    assert layer.flops(d, length) == want
    assert layer.flops(d, 2 * length) == 2 * want


def test_heads_must_divide_inner_width():
    layer = layers.make_layer("mlstm", num_heads=48)
    with pytest.raises(ValueError, match="num_heads"):
        jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((1, 4, 128)))


# ---- init under both backbones -------------------------------------------------------------

@pytest.fixture(scope="module")
def backbone_params():
    """The mixer's parameters in [mlstm, swiglu] under both backbones, from one program."""
    backbones = ("language-model", "autoencoder")
    built = [models.build(["mlstm", "swiglu"], vocab_size=16, max_length=32, dim=64,
                          backbone=b) for b in backbones]

    def program(tokens):
        return [nn.unbox(m.init(jax.random.key(1), tokens)["params"]) for m in built]

    params = run_jitted(program, jnp.zeros((2, 32), jnp.int32))
    return {b: p["encoder"]["block_0"]["mixer"] for b, p in zip(backbones, params)}


@pytest.mark.parametrize("backbone", ["language-model", "autoencoder"])
def test_special_parameters_keep_their_init_in_both_backbones(backbone_params, backbone):
    mixer = backbone_params[backbone]
    heads = 32
    for gate in ("igate", "fgate"):
        np.testing.assert_array_equal(np.asarray(mixer[gate]["kernel"]), 0.0)
    np.testing.assert_allclose(np.asarray(mixer["fgate"]["bias"]), np.linspace(3.0, 6.0, heads),
                               rtol=1e-6)
    b_i = np.asarray(mixer["igate"]["bias"])
    assert b_i.shape == (heads,) and 0.05 < b_i.std() < 0.2 and np.abs(b_i).max() < 0.5
    np.testing.assert_array_equal(np.asarray(mixer["learnable_skip"]), 1.0)
    np.testing.assert_array_equal(np.asarray(mixer["norm_weight"]), 1.0)
    lm_b_i = backbone_params["language-model"]["igate"]["bias"]
    np.testing.assert_array_equal(b_i, np.asarray(lm_b_i))
    w = np.asarray(mixer["proj_up"]["kernel"])
    if backbone == "autoencoder":  # the Linear weights are re-drawn N(0, 0.02)
        assert abs(w.std() - 0.02) < 0.003 and np.abs(w).max() > 2.5 * 0.02
    else:  # PyTorch's Linear default, U(+-1/sqrt(64))
        assert np.abs(w).max() <= 1 / 8 and np.abs(w).max() > 0.9 / 8

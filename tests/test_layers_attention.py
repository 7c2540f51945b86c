"""Attention family: parameter counts, state sizes, sliding window, rotary, GLA gates, and the
layers against plain numpy loops written from the PyTorch reference's math."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import layers
from mad_jax.layers.attention import causal_attention
from mad_jax.layers.rotary import apply_rotary
from mad_jax.models import count_params

from layer_harness import abstract_params, apply, apply_sown, float64, init_params, random_input

ATTENTION_LAYERS = ("attention", "mh-attention", "sliding-attention", "mh-sliding-attention",
                    "linear-attention", "mh-linear-attention", "gated-linear-attention",
                    "mh-gated-linear-attention")


# ----------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("name,overrides,dim,expected", [
    # Q, K, V, out: D x D weights and D biases each.
    ("attention", {}, 128, 4 * 128 * 128 + 4 * 128),
    ("mh-attention", {"num_heads": 8}, 64, 4 * 64 * 64 + 4 * 64),
    ("mh-attention", {"num_heads": 8, "use_bias": False}, 64, 4 * 64 * 64),
    # Q, K, V, out (no bias) + two Hadamard feature maps (q, k) of two Dh x Dh layers with bias.
    ("linear-attention", {}, 64, 4 * 64 * 64 + 2 * 2 * (64 * 64 + 64)),
    ("mh-linear-attention", {}, 128, 4 * 128 * 128 + 2 * 2 * (8 * 8 + 8)),
    ("mh-linear-attention", {"tie_feature_map_qk": True}, 128, 4 * 128 * 128 + 2 * (8 * 8 + 8)),
    ("linear-attention", {"feature_map": "elu"}, 64, 4 * 64 * 64),
    # Q, K, V, G, out + gate D -> 16 -> D with bias on the up projection + per-head norm weight Dh.
    ("gated-linear-attention", {}, 128, 5 * 128 * 128 + 128 * 16 + 16 * 128 + 128 + 128),
    ("mh-gated-linear-attention", {}, 64, 5 * 64 * 64 + 64 * 16 + 16 * 64 + 64 + 64 // 8),
])
def test_parameter_counts(name, overrides, dim, expected):
    layer = layers.make_layer(name, **overrides)
    assert count_params(abstract_params(layer, random_input((1, 4, dim)))) == expected


def test_logical_axes_on_projections():
    boxed = abstract_params(layers.make_layer("mh-attention"), random_input((1, 4, 128)))
    assert boxed["query"]["kernel"].names == ("embed", "heads", "kv")
    assert boxed["out"]["kernel"].names == ("heads", "kv", "embed")
    boxed = abstract_params(layers.make_layer("mh-gated-linear-attention"),
                            random_input((1, 4, 128)))
    assert boxed["q_proj"]["kernel"].names == ("embed", "heads", "kv")
    assert boxed["o_proj"]["kernel"].names == ("heads", "kv", "embed")
    assert boxed["q_proj"]["kernel"].value.shape == (128, 8, 16)


# ----------------------------------------------------------------------------- state sizes
@pytest.mark.parametrize("name,overrides,dim,seq_len,expected", [
    ("attention", {}, 128, 1024, 2 * 1024 * 128),
    ("mh-attention", {}, 64, 100, 2 * 100 * 64),
    ("sliding-attention", {}, 128, 1024, 2 * 32 * 128),
    ("mh-sliding-attention", {}, 128, 16, 2 * 16 * 128),          # shorter than the window
    ("linear-attention", {}, 128, 1024, 128 * 128 + 128),          # state matrix + key sum
    ("mh-linear-attention", {}, 128, 1024, 16 * 8 * 8 + 16 * 8),
    ("mh-linear-attention", {"normalize": False}, 128, 1024, 16 * 8 * 8),
    ("gated-linear-attention", {}, 128, 1024, 128 * 128),
    ("mh-gated-linear-attention", {}, 128, 1024, 8 * 16 * 16),
])
def test_state_sizes(name, overrides, dim, seq_len, expected):
    assert layers.make_layer(name, **overrides).state_size(dim=dim, seq_len=seq_len) == expected


def test_flops_full_attention_formula():
    dim, seq_len = 128, 256
    # Projections, scores + values, softmax, rotary on q and k (one head, rotary dim 128).
    expected = (2 * seq_len * dim * 4 * dim + 4 * seq_len * seq_len * dim + seq_len * seq_len
                + 2 * seq_len * 128)
    assert layers.make_layer("attention").flops(dim=dim, seq_len=seq_len) == expected
    # The sliding window caps the computed keys per query at 2 * window.
    sliding = layers.make_layer("sliding-attention")
    assert sliding.flops(dim=dim, seq_len=seq_len) < expected
    sliding_flops = sliding.flops(dim=dim, seq_len=seq_len)
    assert sliding.flops(dim=dim, seq_len=2 * seq_len) < 2.01 * sliding_flops


# ----------------------------------------------------------------------------- sequence lengths
@pytest.mark.parametrize("name", ATTENTION_LAYERS)
@pytest.mark.parametrize("seq_len", [1, 33])
def test_any_length(name, seq_len):
    layer = layers.make_layer(name)
    x = random_input((2, seq_len, 128))
    y = apply(layer, init_params(layer, x), x)
    assert y.shape == x.shape and np.all(np.isfinite(np.asarray(y)))


@pytest.mark.parametrize("name",
                         ["mh-attention", "mh-sliding-attention", "mh-gated-linear-attention"])
def test_bfloat16_compute(name):
    layer = layers.make_layer(name, dtype=jnp.bfloat16)
    x = random_input((2, 16, 128))
    params = init_params(layer, x)
    y = apply(layer, params, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y, np.float32)))
    y32 = apply(layers.make_layer(name), params, x)
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y32), atol=5e-2, rtol=5e-2)


# ----------------------------------------------------------------------------- sliding window
@pytest.mark.parametrize("name", ["sliding-attention", "mh-sliding-attention"])
@pytest.mark.parametrize("seq_len", [8, 31])  # banded mask (L <= 2W) and blocked form (L > 2W)
def test_sliding_window_drops_keys_beyond_the_window(name, seq_len):
    window = 4
    layer = layers.make_layer(name, window=window)
    x = random_input((2, seq_len, 128))
    noise = random_input((2, seq_len, 128), seed=9)
    params = init_params(layer, x)
    pos = jnp.arange(seq_len)[None, :, None]

    @jax.jit
    def outputs(first_seen):
        """Outputs for: x itself; x with every input before first_seen replaced; x with the input
        at first_seen shifted; x with every input after first_seen + window - 1 replaced."""
        def run(x):
            return layer.apply({"params": params}, x)

        return (run(x), run(jnp.where(pos < first_seen, noise, x)),
                run(x + (pos == first_seen)),
                run(jnp.where(pos >= first_seen + window, noise, x)))

    for t in range(window, seq_len):
        first_seen = t - window + 1  # the window of t is first_seen .. t
        y, y_old, y_edge, y_future = map(np.asarray, outputs(first_seen))
        # Inputs before the window of t change: outputs from t on stay the same.
        np.testing.assert_allclose(y_old[:, t:], y[:, t:], atol=1e-6, rtol=1e-6)
        # The oldest key inside the window still matters.
        assert not np.allclose(y_edge[:, t], y[:, t], atol=1e-6)
        # Inputs after t change: outputs up to t stay the same.
        np.testing.assert_allclose(y_future[:, :t + 1], y[:, :t + 1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("seq_len,window", [(27, 4), (27, 5), (20, 3), (9, 1), (12, 6)])
def test_blocked_sliding_matches_banded_mask(seq_len, window):
    kq, kk, kv = jax.random.split(jax.random.key(3), 3)
    q, k, v = (jax.random.normal(key, (2, seq_len, 3, 8)) for key in (kq, kk, kv))
    # L > 2W: the blocked path.
    blocked = jax.jit(causal_attention, static_argnames="window")(q, k, v, window=window)
    pos = np.arange(seq_len)
    allowed = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - window)
    q64, k64 = np.asarray(q, np.float64), np.asarray(k, np.float64)
    scores = np.einsum("bqhd,bkhd->bhqk", q64, k64) / np.sqrt(8)
    scores = np.where(allowed, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = np.einsum("bhqk,bkhd->bqhd", probs, np.asarray(v, np.float64))
    np.testing.assert_allclose(np.asarray(blocked), expected, atol=1e-5, rtol=1e-5)


def test_window_at_least_length_is_full_attention():
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 10, 2, 8)) for i in range(3))
    np.testing.assert_allclose(np.asarray(causal_attention(q, k, v, window=10)),
                               np.asarray(causal_attention(q, k, v)), atol=1e-6)


# ----------------------------------------------------------------------------- rotary
def test_rotary_scores_are_relative():
    head_dim, rotary_dim, seq_len = 16, 8, 12
    q = jax.random.normal(jax.random.key(0), (1, seq_len, 2, head_dim))
    k = jax.random.normal(jax.random.key(1), (1, seq_len, 2, head_dim))

    def scores(offset):
        pos = jnp.arange(seq_len) + offset
        q_rot = apply_rotary(q, rotary_dim, positions_L=pos)
        k_rot = apply_rotary(k, rotary_dim, positions_L=pos)
        return np.asarray(jnp.einsum("bqhd,bkhd->bhqk", q_rot, k_rot))

    np.testing.assert_allclose(scores(37), scores(0), atol=2e-4, rtol=2e-4)
    q_rot = apply_rotary(q, rotary_dim)
    # The channels past rotary_dim pass through; the rotation keeps norms.
    np.testing.assert_array_equal(np.asarray(q_rot[..., rotary_dim:]),
                                  np.asarray(q[..., rotary_dim:]))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(q_rot), axis=-1),
                               np.linalg.norm(np.asarray(q), axis=-1), rtol=1e-5)
    # Position 0 is the identity.
    np.testing.assert_allclose(np.asarray(q_rot[:, 0]), np.asarray(q[:, 0]), atol=1e-6)


# ----------------------------------------------------------------------------- numpy references
def _np_rotary(x_LxD, rotary_dim, base=10000.0):
    """flash-attn's non-interleaved rotary: x*cos + rotate_half(x)*sin on the first rotary_dim."""
    seq_len = x_LxD.shape[0]
    inv_freq = 1.0 / base ** (np.arange(0, rotary_dim, 2) / rotary_dim)
    angles = np.arange(seq_len)[:, None] * inv_freq[None, :]
    cos, sin = np.tile(np.cos(angles), 2), np.tile(np.sin(angles), 2)
    x_rot = x_LxD[:, :rotary_dim]
    half = rotary_dim // 2
    rotate_half = np.concatenate([-x_rot[:, half:], x_rot[:, :half]], axis=-1)
    return np.concatenate([x_rot * cos + rotate_half * sin, x_LxD[:, rotary_dim:]], axis=-1)


@pytest.mark.parametrize("window", [None, 3])
def test_multi_head_attention_matches_loop_over_heads(window):
    dim, heads, rotary_dim, seq_len = 32, 4, 4, 9
    layer = layers.make_layer("mh-attention", num_heads=heads, rotary_dim=rotary_dim, window=window)
    x = random_input((2, seq_len, dim))
    params = init_params(layer, x)
    y = np.asarray(apply(layer, params, x))
    p, xs = float64(params), np.asarray(x, np.float64)
    pos = np.arange(seq_len)
    allowed = pos[None, :] <= pos[:, None]
    if window is not None:
        allowed &= pos[None, :] > pos[:, None] - window
    for b in range(2):
        outs = []
        for h in range(heads):
            q, k, v = (xs[b] @ p[n]["kernel"][:, h] + p[n]["bias"][h]
                       for n in ("query", "key", "value"))
            q, k = _np_rotary(q, rotary_dim), _np_rotary(k, rotary_dim)
            s = np.where(allowed, q @ k.T / np.sqrt(dim // heads), -np.inf)
            a = np.exp(s - s.max(-1, keepdims=True))
            outs.append((a / a.sum(-1, keepdims=True)) @ v)
        out = p["out"]
        expected = np.concatenate(outs, -1) @ out["kernel"].reshape(dim, dim) + out["bias"]
        np.testing.assert_allclose(y[b], expected, atol=1e-5, rtol=1e-4)


def test_linear_attention_matches_reference_quadratic_form():
    dim, heads, seq_len = 32, 2, 10
    layer = layers.make_layer("mh-linear-attention", num_heads=heads)
    x = random_input((2, seq_len, dim))
    params = init_params(layer, x)
    y = np.asarray(apply(layer, params, x), np.float64)
    p, xs = float64(params), np.asarray(x, np.float64)

    def phi(a, fmap):
        l1, l2 = p[fmap]["layer1"], p[fmap]["layer2"]
        return (a @ l1["kernel"] + l1["bias"]) * (a @ l2["kernel"] + l2["bias"])

    for b in range(2):
        outs = []
        for h in range(heads):
            q = phi(xs[b] @ p["q_proj"]["kernel"][:, h], "feature_map_q")
            k = phi(xs[b] @ p["k_proj"]["kernel"][:, h], "feature_map_k")
            v = xs[b] @ p["v_proj"]["kernel"][:, h]
            # The reference: tril(q k^T) v / (q . cumsum(k) + eps).
            num = np.tril(q @ k.T) @ v
            den = np.einsum("ld,ld->l", q, np.cumsum(k, axis=0)) + 1e-12
            outs.append(num / den[:, None])
        expected = np.concatenate(outs, -1) @ p["out_proj"]["kernel"].reshape(dim, dim)
        # The normaliser can be small (unconstrained features), so compare on the output's scale.
        np.testing.assert_allclose(y[b], expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-3)


def test_gated_linear_attention_matches_recurrent_loop():
    dim, heads, rank, seq_len, eps = 32, 2, 4, 11, 1e-5
    layer = layers.make_layer("mh-gated-linear-attention", num_heads=heads, gate_low_rank_dim=rank)
    x = random_input((2, seq_len, dim))
    params = init_params(layer, x)
    # Non-zero gate bias so the per-channel decays differ visibly.
    gate_bias_shape = params["gk_proj_up"]["bias"].shape
    params["gk_proj_up"]["bias"] = jax.random.normal(jax.random.key(5), gate_bias_shape)
    y = np.asarray(apply(layer, params, x), np.float64)
    p, xs = float64(params), np.asarray(x, np.float64)
    dh = dim // heads
    for b in range(2):
        outs = []
        gk = (xs[b] @ p["gk_proj_down"]["kernel"]) @ p["gk_proj_up"]["kernel"].reshape(rank, dim)
        gk = gk + p["gk_proj_up"]["bias"].reshape(dim)
        log_decay = -np.logaddexp(0.0, -gk) / 16.0
        for h in range(heads):
            q, k, v, g = (xs[b] @ p[n]["kernel"][:, h]
                          for n in ("q_proj", "k_proj", "v_proj", "g_proj"))
            decay = np.exp(log_decay[:, h * dh:(h + 1) * dh])
            state = np.zeros((dh, dh))
            o = np.zeros((seq_len, dh))
            for t in range(seq_len):   # naive_recurrent_gla
                state = decay[t][:, None] * state + np.outer(k[t], v[t])
                o[t] = (q[t] * dh ** -0.5) @ state
            o = o / np.sqrt(np.mean(o ** 2, -1, keepdims=True) + eps) * p["g_norm"]
            outs.append(o * g / (1.0 + np.exp(-g)))
        expected = np.concatenate(outs, -1) @ p["o_proj"]["kernel"].reshape(dim, dim)
        np.testing.assert_allclose(y[b], expected, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- GLA gates
@pytest.mark.parametrize("name", ["gated-linear-attention", "mh-gated-linear-attention"])
def test_gla_decay_gates_lie_in_unit_interval(name):
    layer = layers.make_layer(name)
    x = random_input((2, 16, 128))
    params = init_params(layer, x)
    _, state = apply_sown(layer, params, x * 3.0)
    (log_decay,) = state["intermediates"]["log_decay"]
    decay = np.exp(np.asarray(log_decay))
    assert log_decay.shape == (2, 16, layer.num_heads, 128 // layer.num_heads)
    assert np.all(decay > 0.0) and np.all(decay < 1.0)
    # log_sigmoid(logit) / 16 in (-inf, 0): a logit of 0 keeps 0.5 ** (1/16) of the state per step.
    assert np.all(np.asarray(log_decay) < 0.0)


def test_gla_clamp_min_bounds_the_log_decay():
    layer = layers.make_layer("gated-linear-attention", clamp_min=-0.01)
    x = random_input((1, 8, 64))
    params = init_params(layer, x)
    params["gk_proj_up"]["bias"] = params["gk_proj_up"]["bias"] - 20.0  # would decay fast unclamped
    _, state = apply_sown(layer, params, x)
    (log_decay,) = state["intermediates"]["log_decay"]
    np.testing.assert_allclose(np.asarray(log_decay), -0.01, atol=1e-7)

"""based (Taylor-feature linear attention): the feature map's inner product, the chunked layer
against a float64 step-by-step recurrence, FLOP / state / parameter formulas, bf16."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import layers
from mad_jax.layers.based import expanded_feature_dim, taylor_feature_map
from mad_jax.layers.initializers import linear_init_override

from layer_harness import init_params, run_jitted

DIM, HEADS, CHUNK = 32, 2, 16

# Oracle comparisons need true float32 matmuls (GPUs default to TF32 for float32).
pytestmark = pytest.mark.usefixtures("full_precision_matmuls")


def test_taylor_feature_map_inner_product_is_the_degree_two_taylor_polynomial():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 5, 16))
    with jax.enable_x64(True):
        phi_x, phi_y = (np.asarray(taylor_feature_map(jnp.asarray(z, jnp.float64))) for z in (x, y))
    assert phi_x.shape == (5, expanded_feature_dim(16)) == (5, 273)
    dot = np.sum(x * y, axis=-1)
    np.testing.assert_allclose(np.sum(phi_x * phi_y, axis=-1), 1 + dot + dot ** 2 / 2,
                               rtol=1e-13, atol=1e-13)
    # Hence every score is >= 1/2 (= ((1 + s)^2 + 1) / 2), the normaliser's lower bound.
    assert np.all(np.sum(phi_x * phi_y[::-1], axis=-1) >= 0.5)


@pytest.fixture(scope="module")
def based():
    """Two heads (value width 16), chunks of 16: the layer and its float32 parameters."""
    layer = layers.make_layer("based", num_heads=HEADS, chunk_size=CHUNK)
    x = jax.random.normal(jax.random.key(0), (2, 8, DIM), jnp.float32)
    return layer, init_params(layer, x)


def step_by_step_float64(p, x, num_heads, feature_dim):
    """S_t = S_{t-1} + phi(k_t)^T v_t, z_t = z_{t-1} + phi(k_t), o_t = phi(q_t) S_t / phi(q_t) z_t,
    token by token in float64, with phi written out as [1, z, z (x) z / sqrt(2)]."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    x = np.asarray(x, np.float64)
    batch, seq_len, dim = x.shape
    head_v = dim // num_heads

    def phi(z):  # [B, H, F] -> [B, H, 1 + F + F^2]
        outer = (z[..., :, None] * z[..., None, :]).reshape(*z.shape[:-1], -1) / math.sqrt(2)
        return np.concatenate([np.ones(z.shape[:-1] + (1,)), z, outer], axis=-1)

    expanded = 1 + feature_dim + feature_dim ** 2
    state = np.zeros((batch, num_heads, expanded, head_v))
    key_sum = np.zeros((batch, num_heads, expanded))
    scale = feature_dim ** -0.25
    out = []
    for t in range(seq_len):
        q = np.einsum("bd,dhf->bhf", x[:, t], p["q_proj"]["kernel"]) * scale
        k = np.einsum("bd,dhf->bhf", x[:, t], p["k_proj"]["kernel"]) * scale
        v = np.einsum("bd,dhv->bhv", x[:, t], p["v_proj"]["kernel"])
        state = state + phi(k)[..., :, None] * v[..., None, :]
        key_sum = key_sum + phi(k)
        o = (np.einsum("bhe,bhev->bhv", phi(q), state)
             / np.einsum("bhe,bhe->bh", phi(q), key_sum)[..., None])
        out.append(np.einsum("bhv,hvd->bd", o, p["out_proj"]["kernel"]))
    return np.stack(out, axis=1)


@pytest.mark.parametrize("seq_len", [32, 37])
def test_chunked_layer_matches_float64_step_by_step(based, seq_len):
    """32 = two whole chunks of 16; 37 ends in a partial chunk."""
    layer, params = based
    x = jax.random.normal(jax.random.key(seq_len), (2, seq_len, DIM), jnp.float32)
    y = run_jitted(lambda p, x: layer.apply({"params": p}, x), params, x)
    want = step_by_step_float64(params, x, HEADS, layer.feature_dim)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)


def test_bfloat16_forward_is_finite(based):
    layer, params = based
    layer16 = layers.make_layer("based", num_heads=HEADS, chunk_size=CHUNK, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(3), (1, 40, DIM), jnp.float32)
    y = run_jitted(lambda p, x: layer16.apply({"params": p}, x), params, x)
    assert y.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y, np.float32)))


def test_flops_state_and_params_at_width_128():
    layer = layers.make_layer("based")
    assert (layer.num_heads, layer.feature_dim) == (1, 16)
    d, h, f, e, v, seq = 128, 1, 16, 273, 128, 1024
    # S (H E V) and the normaliser's z (H E), whatever the length.
    assert layer.state_size(d, seq) == layer.state_size(d, 5) == h * e * v + h * e == 35_217
    assert layers.make_layer("based", num_heads=4).state_size(d, seq) == 4 * e * 32 + 4 * e
    want_flops = (2 * 2 * seq * d * h * f + 2 * seq * d * h * v   # q, k, v maps
                  + 2 * seq * h * f + 4 * seq * h * f * f         # scale, feature maps of q and k
                  + 4 * seq * h * e * (v + 1)                     # recurrence with the ones column
                  + seq * h * v + 2 * seq * h * v * d)            # division, output map
    assert layer.flops(d, seq) == want_flops == 220_958_720
    shapes = nn.unbox(jax.eval_shape(layer.init, jax.random.key(0),
                                     jax.ShapeDtypeStruct((1, 4, d), jnp.float32))["params"])
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
    assert n_params == 2 * d * h * f + d * h * v + h * v * d == 36_864


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        layers.make_layer("based", num_heads=3).state_size(128, 16)


def test_every_parameter_is_a_linear_map_the_autoencoder_redraws():
    """Based has no special parameters: all four maps take a backbone's Linear override."""
    layer = layers.make_layer("based")
    x = jnp.zeros((1, 4, DIM), jnp.float32)
    with linear_init_override(nn.initializers.constant(0.5), nn.initializers.zeros):
        shapes_and_values = nn.unbox(run_jitted(layer.init, jax.random.key(0), x)["params"])
    leaves = jax.tree_util.tree_leaves(shapes_and_values)
    assert len(leaves) == 4 and all(np.all(np.asarray(a) == 0.5) for a in leaves)

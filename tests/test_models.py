"""Backbones, the hybrid builder and whole-model accounting."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mad_jax
from mad_jax import layers, models


class CumulativeMean(nn.Module):
    """A user-style causal mixer: Dense(cumulative mean over positions). [B, L, D] -> [B, L, D]."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD):
        counts_L = jnp.arange(1, x_BxLxD.shape[1] + 1, dtype=jnp.float32)
        mean_BxLxD = jnp.cumsum(x_BxLxD, axis=1) / counts_L[None, :, None]
        return nn.Dense(x_BxLxD.shape[-1], name="proj")(mean_BxLxD)

    def flops(self, dim, seq_len):
        return 2 * seq_len * dim * dim + seq_len * dim

    def state_size(self, dim, seq_len):
        return dim + 1


@pytest.fixture(scope="module", autouse=True)
def user_layer():
    layers.register_layer("test-cumulative-mean", CumulativeMean, overwrite=True)
    yield
    layers.LAYERS.pop("test-cumulative-mean", None)


def test_parse_layers_compact_forms():
    parse = models.parse_layers
    assert parse("test-cumulative-mean") == ("test-cumulative-mean",)
    assert parse("(test-cumulative-mean test-cumulative-mean)x2") == ("test-cumulative-mean",) * 4
    assert parse(" test-cumulative-meanx3 ") == ("test-cumulative-mean",) * 3
    assert parse(["test-cumulative-mean"]) == ("test-cumulative-mean",)


@pytest.mark.parametrize("bad, message", [
    ("no-such-layer", "unknown layer 'no-such-layer'"),
    ("(test-cumulative-mean", "unbalanced '('"),
    ("test-cumulative-mean)", "unbalanced ')'"),
    ("", "at least one layer"),
])
def test_parse_layers_errors(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        models.parse_layers(bad)


@pytest.mark.parametrize("kwargs, message", [
    (dict(backbone="decoder"), "unknown backbone"),
    (dict(norm="batchnorm"), "unknown norm"),
    (dict(vocab_size=1), "vocab_size must be an integer >= 2"),
    (dict(layer_configs={"mlp": {}}), "not in the model's layers"),
])
def test_build_errors(kwargs, message):
    args = dict(layers="test-cumulative-mean", vocab_size=8, max_length=8)
    with pytest.raises(ValueError, match=message):
        models.build(**{**args, **kwargs})


@pytest.mark.parametrize("backbone", ["language-model", "autoencoder"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_backbones_shapes_and_param_count(backbone, norm):
    dim, vocab, length = 16, 11, 9
    model = models.build("test-cumulative-mean test-cumulative-mean", vocab_size=vocab,
                         max_length=length, dim=dim, backbone=backbone, norm=norm)
    tokens = jnp.zeros((3, length), jnp.int32)
    params = model.init(jax.random.key(0), tokens)["params"]
    logits = model.apply({"params": params}, tokens)
    assert logits.shape == (3, length, vocab) and logits.dtype == jnp.float32
    norm_params = 2 * dim if norm == "layernorm" else dim
    expected = (vocab * dim                       # embedding
                + 2 * (norm_params + dim * dim + dim)  # two blocks: norm + dense
                + norm_params + dim * vocab + vocab)   # final norm + unembedding
    if backbone == "autoencoder":
        expected += 2 * (norm_params + dim * dim + dim)  # decoder: two (norm, dense) pairs
    assert models.count_params(params) == expected


def test_language_model_is_causal_and_autoencoder_is_not():
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 8)
    changed = tokens.at[:, 6:].set((tokens[:, 6:] + 1) % 8)
    for backbone, causal in (("language-model", True), ("autoencoder", False)):
        model = models.build("test-cumulative-mean", vocab_size=8, max_length=10, dim=16,
                             backbone=backbone)
        params = model.init(jax.random.key(0), tokens)["params"]
        before = model.apply({"params": params}, tokens)[:, :6]
        after = model.apply({"params": params}, changed)[:, :6]
        assert np.allclose(before, after, atol=1e-6) == causal


def test_input_longer_than_max_length_is_an_error():
    model = models.build("test-cumulative-mean", vocab_size=8, max_length=4, dim=8)
    with pytest.raises(ValueError, match="exceeds max_length=4"):
        model.init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32))


def test_params_carry_logical_axis_names():
    model = models.build("test-cumulative-mean", vocab_size=8, max_length=4, dim=8)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    specs = nn.get_partition_spec(variables)["params"]
    assert tuple(specs["encoder"]["embed"]["tokens"]["embedding"]) == ("vocab", "embed")
    assert tuple(specs["unembed"]["proj"]["kernel"]) == ("embed", "vocab")


def test_model_flops_and_state_size_sum_the_layers():
    dim, seq_len, vocab = 16, 32, 10
    per_layer = 2 * seq_len * dim * dim + seq_len * dim
    got = models.flops("test-cumulative-meanx3", dim=dim, seq_len=seq_len, vocab_size=vocab)
    assert got == 3 * per_layer + 2 * seq_len * dim * vocab
    got_ae = models.flops("test-cumulative-mean", dim=dim, seq_len=seq_len, vocab_size=vocab,
                          backbone="autoencoder")
    assert got_ae == per_layer + 2 * seq_len * dim * vocab + 2 * 2 * seq_len * dim * dim
    assert models.state_size("test-cumulative-meanx3", dim=dim, seq_len=seq_len) == 3 * (dim + 1)


def test_public_api_names():
    assert mad_jax.models.build is models.build
    assert callable(mad_jax.models.count_params)
    assert isinstance(mad_jax.layers.LAYERS, dict)


def test_two_layer_hybrid_trains_and_loss_drops():
    """A real two-layer hybrid fits a fixed batch of next-token data: its loss falls within 30 steps."""
    model = models.build("mh-attention swiglu", vocab_size=16, max_length=16, dim=32,
                         layer_configs={"mh-attention": {"num_heads": 4}})
    tokens = jax.random.randint(jax.random.key(3), (8, 17), 0, 16)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    params = model.init(jax.random.key(0), inputs)["params"]
    optimizer = optax.adam(3e-3)

    def loss_fn(params):
        logits = model.apply({"params": params}, inputs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    losses = []
    for _ in range(30):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses


def _param_shapes(model, length):
    tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
    return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens)["params"])


def test_block_gives_layers_the_model_max_length():
    """The Hyena filter's positional embedding has max_length rows, not the input's length."""
    model = models.build("hyena", vocab_size=8, max_length=12, dim=16)
    params = _param_shapes(model, 9)
    assert params["encoder"]["block_0"]["mixer"]["filter"]["z"].shape == (12, 3)
    model = models.build("hyena", vocab_size=8, max_length=12, dim=16,
                         layer_configs={"hyena": {"max_length": 20}})  # a user override wins
    assert _param_shapes(model, 9)["encoder"]["block_0"]["mixer"]["filter"]["z"].shape == (20, 3)


# Measured from the PyTorch reference (athms/mad-lab: `MADModelConfig(...)
# .build_model_from_registry()` and its layer classes with configs/layers/*.yml, dim 128, max_length 128, vocab 16, LayerNorm).
# The reference's `moe-mlp` is our `moe-mlp-paper`; its `mh-hyena` runs 8 heads of width 16, our
# `mh-hyena` with num_heads=8 (16 heads, the default, has 24 more filter parameters).
REFERENCE_LAYER_PARAMS = {"hyena": 124_348, "mh-hyena": 30_862, "hyena-experts": 57_464,
                          "moe-mlp-paper": 165_000, "swiglu": 135_168}
REFERENCE_MODEL_PARAMS = {"language-model": 518_490, "autoencoder": 552_026}
REFERENCE_HYBRID = ["hyena", "moe-mlp-paper", "mh-hyena", "hyena-experts", "swiglu"]
REFERENCE_CONFIGS = {"mh-hyena": {"num_heads": 8}}


@pytest.mark.parametrize("name", sorted(REFERENCE_LAYER_PARAMS))
def test_layer_parameter_counts_match_the_reference(name):
    model = models.build(name, vocab_size=16, max_length=128,
                         layer_configs={k: v for k, v in REFERENCE_CONFIGS.items() if k == name})
    mixer = _param_shapes(model, 127)["encoder"]["block_0"]["mixer"]
    assert models.count_params(mixer) == REFERENCE_LAYER_PARAMS[name]


@pytest.mark.parametrize("backbone", sorted(REFERENCE_MODEL_PARAMS))
def test_backbone_parameter_counts_match_the_reference(backbone):
    model = models.build(REFERENCE_HYBRID, vocab_size=16, max_length=128, backbone=backbone,
                         layer_configs=REFERENCE_CONFIGS)
    length = 128 if backbone == "autoencoder" else 127
    assert models.count_params(_param_shapes(model, length)) == REFERENCE_MODEL_PARAMS[backbone]


@functools.lru_cache(maxsize=None)
def _init_params(backbone):
    model = models.build("hyena swiglu", vocab_size=16, max_length=32, dim=64, backbone=backbone)
    return nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, 32), jnp.int32))["params"])


def _is_torch_uniform(w, fan_in):
    bound = 1 / np.sqrt(fan_in)
    return np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound


def test_language_model_init_is_the_reference():
    params = _init_params("language-model")
    assert abs(float(np.std(params["encoder"]["embed"]["tokens"]["embedding"])) - 0.02) < 0.003
    unembed = params["unembed"]["proj"]
    assert _is_torch_uniform(np.asarray(unembed["kernel"]), 64)  # nn.Linear's default
    np.testing.assert_array_equal(np.asarray(unembed["bias"]), 0.0)
    mixer = params["encoder"]["block_0"]["mixer"]
    assert _is_torch_uniform(np.asarray(mixer["in_proj"]["kernel"]), 64)
    assert _is_torch_uniform(np.asarray(params["encoder"]["block_1"]["mixer"]["w3"]["kernel"]), 176)
    for norm in (params["encoder"]["block_0"]["norm"], params["unembed"]["norm"]):
        np.testing.assert_array_equal(np.asarray(norm["scale"]), 1.0)
        np.testing.assert_array_equal(np.asarray(norm["bias"]), 0.0)


def test_autoencoder_redraws_every_linear_weight_from_normal_002():
    """The reference autoencoder's `_init_weights` runs over all modules, the layers' Linears
    included; convolutions, the skip D and the filter's positional embedding keep their init."""
    params = _init_params("autoencoder")
    lm = _init_params("language-model")
    hyena, swiglu = (params["encoder"][f"block_{i}"]["mixer"] for i in (0, 1))
    linears = [hyena["in_proj"]["kernel"], hyena["out_proj"]["kernel"],
               hyena["filter"]["out"]["kernel"], swiglu["w1"]["kernel"], swiglu["w3"]["kernel"],
               params["decoder"]["dense_0"]["kernel"], params["decoder"]["dense_1"]["kernel"],
               params["unembed"]["proj"]["kernel"]]
    for w in linears:
        w = np.asarray(w)
        assert abs(w.std() - 0.02) < 0.004 and np.abs(w).max() > 2.5 * 0.02  # normal, not uniform
    lm_hyena = lm["encoder"]["block_0"]["mixer"]
    for keep in (lambda p: p["short_filter"]["kernel"], lambda p: p["filter"]["z"],
                 lambda p: p["bias"]):
        np.testing.assert_array_equal(np.asarray(keep(hyena)), np.asarray(keep(lm_hyena)))

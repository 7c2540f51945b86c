"""Bring your own architecture, without editing mad_jax.

Two ways in (README "Bring your own layer or model"):
  1. a user `flax.linen` layer registered under a new name with `mad_jax.layers.register_layer`, used
     in a hybrid string with `mad_jax.models.build`, trained through `mad_jax.protocol.run`;
  2. a whole user model, returned by `model_fn(task, vocab_size, max_length)`, passed to `run`.
Everything here is defined in this test module, as a user would in their own code.
Budgets are tiny (a few steps on one task): these check the plumbing, not the scores.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import mad_jax
from mad_jax import layers, models, protocol
from tiny_runs import TINY_RUN

TASK = "memorization"  # the cheapest task: 32 tokens per sequence
GRID = ((1e-3, 0.0), (5e-3, 0.0))
TINY = dict(TINY_RUN, log_every_steps=2)


class CausalConvMixer(nn.Module):
    """A user sequence mixer: depthwise causal convolution over the last `width` tokens, then a
    dense map. [B, L, D] -> [B, L, D]; output t depends on inputs t-width+1 .. t only."""

    width: int = 4
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD):
        length, dim = x_BxLxD.shape[1], x_BxLxD.shape[2]
        kernel_WxD = self.param("kernel", nn.initializers.normal(0.5), (self.width, dim),
                                self.param_dtype)
        padded_BxPxD = jnp.pad(x_BxLxD.astype(self.dtype), ((0, 0), (self.width - 1, 0), (0, 0)))
        y_BxLxD = sum(padded_BxPxD[:, i:i + length] * kernel_WxD[i] for i in range(self.width))
        return nn.Dense(dim, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(y_BxLxD)

    # Optional accounting methods, so models.flops / models.state_size can count this layer.
    def flops(self, dim, seq_len):
        return 2 * seq_len * dim * self.width + 2 * seq_len * dim * dim + seq_len * dim

    def state_size(self, dim, seq_len):
        return (self.width - 1) * dim  # the last width-1 inputs


class TinyUserLM(nn.Module):
    """A whole user model, not built by mad_jax: embedding, one causal-conv residual block,
    final norm, unembedding. tokens [B, L] int32 -> logits [B, L, V] float32."""

    vocab_size: int
    dim: int = 32

    @nn.compact
    def __call__(self, tokens_BxL):
        x_BxLxD = nn.Embed(self.vocab_size, self.dim, name="embed")(tokens_BxL)
        x_BxLxD = x_BxLxD + CausalConvMixer(name="mixer")(nn.LayerNorm(name="norm")(x_BxLxD))
        return nn.Dense(self.vocab_size, name="unembed")(nn.LayerNorm(name="final_norm")(x_BxLxD))


USER_LAYER = "test-user-causal-conv"
HYBRID = f"{USER_LAYER} swiglu"


@pytest.fixture(scope="module", autouse=True)
def registered():
    layers.register_layer(USER_LAYER, CausalConvMixer, {"width": 3})
    yield
    layers.LAYERS.pop(USER_LAYER, None)  # LAYERS is process-wide: leave it as we found it


def hybrid_model_fn(task, vocab_size, max_length):
    return models.build(HYBRID, vocab_size=vocab_size, max_length=max_length, dim=16,
                        backbone=mad_jax.tasks.TASK_BACKBONE[task])


def user_model_fn(task, vocab_size, max_length):
    return TinyUserLM(vocab_size=vocab_size, dim=16)


def test_registration_needs_no_mad_jax_edit_and_guards_names():
    spec = layers.LAYERS[USER_LAYER]
    assert spec.module is CausalConvMixer and dict(spec.config) == {"width": 3}
    assert CausalConvMixer.__module__ == __name__  # the layer lives in user code
    with pytest.raises(ValueError, match="already registered"):
        layers.register_layer(USER_LAYER, CausalConvMixer)
    with pytest.raises(ValueError, match="not fields"):
        layers.register_layer("test-user-bad", CausalConvMixer, {"kernel_size": 3})
    assert models.parse_layers(f"({HYBRID})x2") == (USER_LAYER, "swiglu") * 2


def test_user_layer_in_a_hybrid_string_is_causal_and_counted():
    dim, length, vocab = 16, 12, 10
    model = models.build(f"{USER_LAYER} swiglu mh-attention swiglu", vocab_size=vocab,
                         max_length=length, dim=dim, layer_configs={"mh-attention": {"num_heads": 2}})
    tokens = jax.random.randint(jax.random.key(0), (2, length), 0, vocab)
    params = model.init(jax.random.key(1), tokens)["params"]
    logits = model.apply({"params": params}, tokens)
    assert logits.shape == (2, length, vocab)
    changed = tokens.at[:, 7:].set((tokens[:, 7:] + 1) % vocab)
    np.testing.assert_allclose(model.apply({"params": params}, changed)[:, :7], logits[:, :7],
                               atol=1e-5, rtol=1e-5)
    mixer = params["encoder"]["block_0"]["mixer"]
    assert np.shape(nn.unbox(mixer["kernel"])) == (3, dim)  # the registered default width=3
    assert models.state_size(USER_LAYER, dim=dim, seq_len=64) == 2 * dim
    layer_flops = 2 * length * dim * 3 + 2 * length * dim * dim + length * dim
    assert models.layer_flops(USER_LAYER, dim=dim, seq_len=length) == layer_flops


def _check_results(results, arch, expected_params):
    assert isinstance(results, pd.DataFrame) and len(results) == len(GRID)
    assert set(results["arch"]) == {arch} and set(results["task"]) == {TASK}
    assert set(results["preset"]) == {"smoke"}
    assert list(results["status"]) == ["ok"] * len(GRID), results["error"].tolist()
    assert set(results["params"].astype(int)) == {expected_params}
    acc = results["final_test_acc"].astype(float)
    assert ((acc >= 0) & (acc <= 1)).all()
    s = protocol.scores(results)
    assert set(s) == {TASK, "mean"}
    assert s[TASK] == pytest.approx(acc.max()) and s["mean"] == pytest.approx(s[TASK])


def _params(model_fn, vocab_size, length):
    model = model_fn(TASK, vocab_size, length)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, length), jnp.int32))
    return models.count_params(variables["params"])


def test_registered_user_layer_and_whole_user_model_through_the_protocol(tmp_path):
    vocab = mad_jax.tasks.settings(TASK)[0]["vocab_size"]
    length = mad_jax.tasks.settings(TASK)[0]["seq_len"]
    hybrid = protocol.run(hybrid_model_fn, tmp_path / "hybrid", tasks=[TASK], grid=GRID,
                          preset="smoke", arch="user-hybrid", train_overrides=TINY,
                          progress=False, log=lambda s: None)
    _check_results(hybrid, "user-hybrid", _params(hybrid_model_fn, vocab, length))

    whole = protocol.run(user_model_fn, tmp_path / "whole", tasks=[TASK], grid=GRID,
                         preset="smoke", train_overrides=TINY, progress=False, log=lambda s: None)
    _check_results(whole, "user_model_fn", _params(user_model_fn, vocab, length))  # arch: __name__

    both = pd.concat([hybrid, whole], ignore_index=True)
    table = protocol.score_table(both)
    assert list(table.index) == ["user-hybrid", "user_model_fn"]
    assert list(table.columns) == [TASK, "mean"]
    text = protocol.format_score_table(both)
    assert text.splitlines()[0] == f"| arch | {TASK} | mean |"
    assert (tmp_path / "hybrid" / "results.csv").exists()


class _Zero(nn.Module):
    """A mixer that outputs zeros: the residual stream passes through unchanged."""

    @nn.compact
    def __call__(self, x_BxLxD):
        return jnp.zeros_like(x_BxLxD)


def test_a_built_model_keeps_its_layers_when_the_registry_changes():
    """Layers are resolved when the model is built: replacing a registered name changes models
    built afterwards, never one built before (so no compiled program goes stale)."""
    layers.register_layer("user-replaced-mixer", CausalConvMixer, {"width": 2})
    try:
        model = models.build("user-replaced-mixer", vocab_size=16, max_length=8, dim=16)
        tokens = np.arange(16, dtype=np.int32).reshape(2, 8)

        def train_loss(m):
            result = mad_jax.training.fit(
                m, (tokens, tokens), (tokens, tokens),
                {"train_steps": 2, "batch_size": 2, "stop_accuracy": None}, log=lambda s: None)
            return result[0]["final_train_loss"]

        before = train_loss(model)
        layers.register_layer("user-replaced-mixer", _Zero, overwrite=True)
        rebuilt = models.build("user-replaced-mixer", vocab_size=16, max_length=8, dim=16)
        assert rebuilt.resolved_layers[0][1] is _Zero
        assert model.resolved_layers[0][1] is CausalConvMixer
        assert train_loss(model) == pytest.approx(before)  # the old model: the old layer
        assert train_loss(rebuilt) != pytest.approx(before)
        assert model != rebuilt and hash(model) != hash(rebuilt)
    finally:
        del layers.LAYERS["user-replaced-mixer"]

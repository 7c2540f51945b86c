"""benchmarks/reference_weights.py: our parameters -> the PyTorch reference's names and layouts.

No torch here: the expected names and shapes are those of the reference's `LanguageModel` /
`AutoEncoder` state_dict (athms/mad-lab) for the same layers at width 128, vocab 16.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from benchmarks import reference_weights
from mad_jax import models

LAYERS = ["mh-attention", "swiglu", "hyena", "mamba"]

# The reference's state_dict at max_length 16, minus the tensors it keeps itself
# (reference_weights.REFERENCE_OWN).
EXPECTED_LM = {
    "token_embeds.weight": (16, 128),
    "model.0.0.weight": (128,),
    "model.0.1.Wqkv.weight": (384, 128), "model.0.1.Wqkv.bias": (384,),
    "model.0.1.out_proj.weight": (128, 128), "model.0.1.out_proj.bias": (128,),
    "model.1.0.weight": (128,),
    "model.1.1.w1.weight": (352, 128), "model.1.1.w2.weight": (352, 128),
    "model.1.1.w3.weight": (128, 352),
    "model.2.0.weight": (128,),
    "model.2.1.short_filter.weight": (1536, 1, 3), "model.2.1.short_filter.bias": (1536,),
    "model.2.1.long_conv.bias": (512,),
    "model.2.1.long_conv.filter.pos_emb.z": (1, 16, 3),
    "model.2.1.long_conv.filter.implicit_filter.0.weight": (4, 3),
    "model.2.1.long_conv.filter.implicit_filter.0.bias": (4,),
    "model.2.1.long_conv.filter.implicit_filter.1.freq": (1, 4),
    "model.2.1.long_conv.filter.implicit_filter.2.weight": (4, 4),
    "model.2.1.long_conv.filter.implicit_filter.2.bias": (4,),
    "model.2.1.long_conv.filter.implicit_filter.3.freq": (1, 4),
    "model.2.1.long_conv.filter.implicit_filter.4.weight": (4, 4),
    "model.2.1.long_conv.filter.implicit_filter.4.bias": (4,),
    "model.2.1.long_conv.filter.implicit_filter.5.freq": (1, 4),
    "model.2.1.long_conv.filter.implicit_filter.6.weight": (512, 4),
    "model.2.1.out_proj.weight": (128, 512), "model.2.1.out_proj.bias": (128,),
    "model.2.1.in_proj.weight": (384, 128), "model.2.1.in_proj.bias": (384,),
    "model.3.0.weight": (128,),
    "model.3.1.A_log": (256, 4), "model.3.1.D": (256,),
    "model.3.1.in_proj.weight": (512, 128),
    "model.3.1.conv1d.weight": (256, 1, 4), "model.3.1.conv1d.bias": (256,),
    "model.3.1.x_proj.weight": (16, 256),
    "model.3.1.dt_proj.weight": (256, 8), "model.3.1.dt_proj.bias": (256,),
    "model.3.1.out_proj.weight": (128, 256),
    "unembed.0.weight": (128,), "unembed.1.weight": (16, 128), "unembed.1.bias": (16,),
}


def _params(layers, backbone="language-model", norm="rmsnorm"):
    model = models.build(layers, vocab_size=16, max_length=16, backbone=backbone, norm=norm)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    return jax.device_get(meta.unbox(variables["params"]))


@pytest.fixture(scope="module")
def lm_params():
    return _params(LAYERS)


def test_names_and_shapes_are_the_references(lm_params):
    mapped = reference_weights.to_reference(lm_params, LAYERS)
    assert {k: v.shape for k, v in mapped.items()} == EXPECTED_LM
    assert all(v.dtype == np.float32 for v in mapped.values())


def test_layouts_compute_what_the_reference_computes(lm_params):
    """torch's Linear is x @ W.T + b, its depthwise Conv1d (padding K-1, first L outputs) is
    sum_j w[c, 0, j] x[t - K + 1 + j]; the mapped tensors must give our numbers that way."""
    mapped = reference_weights.to_reference(lm_params, LAYERS)
    mixer = lm_params["encoder"]["block_0"]["mixer"]
    x_TxD = np.random.default_rng(0).normal(size=(5, 128)).astype(np.float32)
    qkv_Tx3D = x_TxD @ mapped["model.0.1.Wqkv.weight"].T + mapped["model.0.1.Wqkv.bias"]
    for i, name in enumerate(("query", "key", "value")):
        ours_TxHxK = np.einsum("td,dhk->thk", x_TxD, mixer[name]["kernel"]) + mixer[name]["bias"]
        np.testing.assert_allclose(qkv_Tx3D[:, 128 * i:128 * (i + 1)],
                                   ours_TxHxK.reshape(5, 128), rtol=1e-5, atol=1e-5)
    o_TxHxK = np.random.default_rng(1).normal(size=(5, 16, 8)).astype(np.float32)
    np.testing.assert_allclose(
        o_TxHxK.reshape(5, 128) @ mapped["model.0.1.out_proj.weight"].T,
        np.einsum("thk,hkd->td", o_TxHxK, mixer["out"]["kernel"]), rtol=1e-5, atol=1e-5)

    from mad_jax.layers.short_conv import causal_depthwise_conv
    conv = lm_params["encoder"]["block_3"]["mixer"]["conv1d"]
    x_1xLxC = np.random.default_rng(2).normal(size=(1, 7, 256)).astype(np.float32)
    ours = np.asarray(causal_depthwise_conv(jnp.asarray(x_1xLxC), conv["kernel"], conv["bias"]))
    w_Cx1xK = mapped["model.3.1.conv1d.weight"]
    k = w_Cx1xK.shape[-1]
    padded = np.pad(x_1xLxC, ((0, 0), (k - 1, 0), (0, 0)))
    torch_style = sum(padded[:, j:j + 7] * w_Cx1xK[:, 0, j] for j in range(k))
    np.testing.assert_allclose(torch_style + mapped["model.3.1.conv1d.bias"], ours,
                               rtol=1e-5, atol=1e-5)

    # One Sin module in the reference: the same freq under every Sin index.
    freqs = [mapped[f"model.2.1.long_conv.filter.implicit_filter.{i}.freq"] for i in (1, 3, 5)]
    assert all(np.array_equal(f, freqs[0]) for f in freqs)


def test_autoencoder_and_layernorm_backbone_names():
    mapped = reference_weights.to_reference(_params(["swiglu"], "autoencoder", "layernorm"),
                                            ["swiglu"], backbone="autoencoder", norm="layernorm")
    assert {k: v.shape for k, v in mapped.items()} == {
        "token_embeds.weight": (16, 128),
        "encoder.0.0.weight": (128,), "encoder.0.0.bias": (128,),
        "encoder.0.1.w1.weight": (352, 128), "encoder.0.1.w2.weight": (352, 128),
        "encoder.0.1.w3.weight": (128, 352),
        "decoder.0.weight": (128,), "decoder.0.bias": (128,),
        "decoder.1.weight": (128, 128), "decoder.1.bias": (128,),
        "decoder.3.weight": (128,), "decoder.3.bias": (128,),
        "decoder.4.weight": (128, 128), "decoder.4.bias": (128,),
        "unembed.0.weight": (128,), "unembed.0.bias": (128,),
        "unembed.1.weight": (16, 128), "unembed.1.bias": (16,),
    }


def test_unmapped_or_missing_parameters_raise(lm_params):
    extra = jax.tree_util.tree_map(lambda x: x, lm_params)
    extra["encoder"]["block_1"]["mixer"]["w4"] = {"kernel": np.zeros((128, 4), np.float32)}
    with pytest.raises(reference_weights.UnmappedParameterError, match="block_1/mixer/w4"):
        reference_weights.to_reference(extra, LAYERS)
    missing = jax.tree_util.tree_map(lambda x: x, lm_params)
    del missing["unembed"]["proj"]["bias"]
    with pytest.raises(reference_weights.UnmappedParameterError, match="unembed/proj/bias"):
        reference_weights.to_reference(missing, LAYERS)
    with pytest.raises(reference_weights.UnmappedParameterError, match="no reference mapping"):
        reference_weights.to_reference(lm_params, ["mh-attention", "swiglu", "hyena", "mlstm"])


def test_reference_own_tensors_are_named_with_a_reason():
    assert reference_weights.reference_own("model.2.1.long_conv.filter.pos_emb.t")
    assert reference_weights.reference_own("model.2.1.long_conv.filter.modulation.deltas")
    assert reference_weights.reference_own("model.0.1.Wqkv.weight") is None

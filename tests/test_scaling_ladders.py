"""Model-size ladders: parameter counts of built models, shapes, families, FLOP accounting."""
import jax
import jax.numpy as jnp
import pytest

from mad_jax import models
from mad_jax.scaling import ladders

TINY_FAMILIES = ("transformer++", "hyena", "mamba", "striped-hyena", "striped-mamba")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_rungs_match_count_params_of_the_built_model(family):
    for rung in ladders.ladder(family, [3e4, 1e5], vocab_size=257, spec="tiny"):
        # Counted at ladders.COUNT_MAX_LENGTH: Hyena's positional embedding grows with max_length.
        model = rung.build(max_length=ladders.COUNT_MAX_LENGTH)
        params = jax.eval_shape(  # the shapes of the built model's parameters, not their values
            lambda m=model: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))["params"]
        assert models.count_params(params) == rung.params
        assert abs(rung.params / rung.target_params - 1) < 0.25
        if rung.num_heads:
            assert rung.dim % rung.num_heads == 0 and rung.dim // rung.num_heads == 8


@pytest.mark.parametrize("family, sizes", [("transformer++", [7e7, 1e9, 7e9]),
                                           ("striped-mamba", [7e7, 1e9])])
def test_paper_ladder_hits_targets(family, sizes):
    rungs = ladders.ladder(family, sizes, vocab_size=50304, spec="paper")
    for rung in rungs:
        # Counted on the built model without allocating it.
        model = rung.build(max_length=8)
        shapes = jax.eval_shape(
            lambda m=model: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))
        assert models.count_params(shapes["params"]) == rung.params
        assert abs(rung.params / rung.target_params - 1) < 0.05
        assert rung.dim % 128 == 0
    dims = [r.dim for r in rungs]
    assert dims == sorted(dims) and rungs[-1].depth > rungs[0].depth


def test_striped_ratio_and_placement():
    fam = ladders.get_family("striped-hyena")
    layers = fam.layers(8)
    mixers = [name for name in layers if name != "swiglu"]
    assert mixers == ["hyena"] * 3 + ["mh-attention"] + ["hyena"] * 3 + ["mh-attention"]
    half = ladders.get_family("striped-hyena@0.5").layers(4)
    assert [n for n in half if n != "swiglu"] == ["hyena", "mh-attention"] * 2
    assert ladders.get_family("striped-mamba", attention_ratio=0.5).attention_ratio == 0.5
    assert ladders.get_family("mamba", attention_ratio=0.25).layers(2) == ("mamba", "mamba")
    # The smallest striped rungs still hold both kinds of mixer.
    rung = ladders.rung("striped-hyena", 3e4, vocab_size=257)
    assert rung.depth >= 4 and "hyena" in rung.layers and "mh-attention" in rung.layers


@pytest.mark.parametrize("name, match", [
    ("gpt", "unknown architecture family 'gpt'; valid families: transformer\\+\\+, hyena"),
    ("transformer++@0.5", "has no attention ratio"),
    ("striped-hyena@x", "bad attention ratio"),
    ("striped-hyena@1.5", "must be in \\(0, 1\\]"),
])
def test_bad_family_names(name, match):
    with pytest.raises(ValueError, match=match):
        ladders.get_family(name)


def test_off_ladder_sizes():
    with pytest.raises(ValueError, match="no model within"):
        ladders.ladder("hyena", [100], vocab_size=257, spec="tiny")
    assert ladders.ladder("hyena", [100, 2e4], vocab_size=257, strict=False)[0].target_params == 2e4
    with pytest.raises(ValueError, match="unknown ladder spec"):
        ladders.ladder("hyena", [2e4], vocab_size=257, spec="huge")


def test_flops_per_token_convention():
    rung = ladders.rung("transformer++", 5e4, vocab_size=257)
    forward = models.flops(rung.layers, dim=rung.dim, seq_len=64, vocab_size=257,
                           layer_configs=rung.layer_configs)

    assert rung.forward_flops(64) == forward
    assert rung.train_flops_per_token(64) == pytest.approx(3 * forward / 64)
    # Dominated by the 6N rule of thumb, plus attention's L-dependent term.
    assert 5 * rung.params < rung.train_flops_per_token(64) < 12 * rung.params
    assert rung.state_size(64) == models.state_size(rung.layers, dim=rung.dim, seq_len=64,
                                                    layer_configs=rung.layer_configs)

"""Mixed precision as the reference trains (bf16 autocast, float32 parameters): layers, ops, models.

With dtype=bfloat16 and param_dtype=float32 a layer runs its matmuls and activations in bf16 and
its softmax, norm statistics, scans, decays, FFT convolutions and cumulative sums in float32.
Every registered layer (the parametrization reads the registry, so new layers are covered) is
initialised in float32 and run in bf16 with the same parameters, and checked two ways:

* which primitives see bf16 operands in the traced bf16 forward (BF16_PRIMITIVES): the policy
  itself. At initialisation a bf16 softmax or norm moves the output by less than the bound below,
  so only this check catches one.
* the relative L2 distance of the bf16 output from the float32 one, against a bound from bf16's
  precision: gross losses (a state carried in bf16, overflow, a wrong dtype) exceed it.

The bound. bf16 keeps 8 significant bits, so one rounding moves a value by at most u = 2^-8
(3.9e-3) relative, about u/2 in RMS. Both forwards see the same bf16-representable input, so the
bf16 error comes from rounding the weights at each matmul and the intermediate results: k such
roundings of unit gain add up in quadrature to about sqrt(k) u/2, 8e-3 for k = 16 (the layers
measure 4e-3 to 9e-3). A relative L2 error of 2e-2 (5u) leaves room for gates that multiply
relative errors, and little more.
"""
import functools

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from mad_jax import layers, models, ops

BATCH, SEQ_LEN, VOCAB = 2, 32, 16
WIDTHS = (32, 64, 128)  # each layer runs at the smallest width its default config accepts
REL_L2_BOUND = 2e-2
BF16, F32 = jnp.bfloat16, jnp.float32
# Registered configs whose float32 forward is itself too ill-conditioned for an L2 comparison to
# measure precision handling. Linear attention's elementwise-product features have no sign, so
# its normaliser phi(q_t) . sum_{s<=t} phi(k_s) passes near zero: rounding only the weights to
# bf16 already moves the float32 output by 5% (1 head) and 180% (16 heads) here (the reference's
# layer is the same function). The L2 comparison runs without the normaliser; the registered
# config still has its normaliser checked for float32 (BF16_PRIMITIVES) and runs in bf16 with
# finite outputs and gradients.
COMPARED_CONFIG = {
    "linear-attention": {"normalize": False},
    "mh-linear-attention": {"normalize": False},
}
LAYER_NAMES = sorted(layers.LAYERS)
# What a bf16 forward may run on bf16 operands: matmuls, elementwise arithmetic, activations and
# data movement. Everything else (exp, log, division, rsqrt, reductions such as softmax and norm
# statistics, cumulative sums, FFTs, scans, top-k) must see float32 operands.
BF16_PRIMITIVES = {
    "dot_general", "add", "sub", "mul", "neg", "max", "min", "abs", "square", "integer_pow",
    "logistic", "tanh", "erf", "select_n", "eq", "ne", "lt", "le", "gt", "ge",
    "convert_element_type", "reshape", "transpose", "broadcast_in_dim", "squeeze",
    "expand_dims", "slice", "dynamic_slice", "dynamic_update_slice", "gather", "pad",
    "concatenate", "split", "tile", "copy", "copy_p",
}


def _compile(fn, *args):
    """fn compiled for args and run (each program here runs once: tests/conftest.py sets the
    fast-compile flags)."""
    return jax.jit(fn)(*args)


def _rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


@functools.lru_cache(maxsize=None)
def _width(name):
    """The smallest width in WIDTHS at which the layer's default config initialises."""
    layer = layers.make_layer(name)
    for dim in WIDTHS:
        try:
            jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((BATCH, SEQ_LEN, dim)))
            return dim
        except ValueError:
            continue
    raise AssertionError(f"{name}: its default config accepts none of the widths {WIDTHS}")


def _bf16_input(dim, seed=0):
    """x [B, L, D] ~ N(0, 1), rounded to bf16 and held in float32: both forwards see the same
    numbers, as the bf16 output of a block's norm."""
    x = jax.random.normal(jax.random.key(seed), (BATCH, SEQ_LEN, dim), F32)
    return x.astype(BF16).astype(F32)


def _forward(layer, params, x):
    """The layer's output and the sum of its sown auxiliary losses (0 if none)."""
    y, sown = layer.apply({"params": params}, x, mutable=["losses", "intermediates"])
    aux = sum(jnp.sum(v) for v in _leaves(sown.get("losses", {})))
    return y, aux


def _bf16_forward_and_grads(layer16, params, x):
    """bf16 forward and the gradient of mean(y^2) + aux (in float32) wrt the float32 params."""
    def loss(params):
        y, aux = _forward(layer16, params, x.astype(BF16))
        return jnp.mean(jnp.square(y.astype(F32))) + aux, y
    (_, y16), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return y16, grads


def _check_bf16_grads(name, grads):
    leaves = _leaves(grads)
    assert leaves and all(g.dtype == F32 for g in leaves), f"{name}: gradients not float32"
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves), f"{name}: non-finite gradient"
    assert any(np.any(np.asarray(g) != 0) for g in leaves), f"{name}: all gradients are zero"


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_bf16_layer_is_close_to_float32_with_float32_gradients(name):
    dim = _width(name)
    config = COMPARED_CONFIG.get(name, {})
    layer32 = layers.make_layer(name, **config)
    layer16 = layers.make_layer(name, dtype=BF16, **config)
    x = _bf16_input(dim)

    def program(x):  # one compiled program: float32 init and forward, bf16 forward and gradients
        y32, variables = layer32.init_with_output(jax.random.key(1), x,
                                                  mutable=["params", "losses", "intermediates"])
        params = variables["params"]
        return (y32, params, *_bf16_forward_and_grads(layer16, params, x))

    y32, params, y16, grads = _compile(program, x)
    assert all(p.dtype == F32 for p in _leaves(params))
    assert y16.dtype == BF16, f"{name}: bf16 layer returned {y16.dtype}, expected bfloat16"
    assert np.all(np.isfinite(np.asarray(y16, np.float32))), f"{name}: non-finite bf16 output"
    _check_bf16_grads(name, grads)
    err = _rel_l2(np.asarray(y16, np.float32), y32)
    if err >= REL_L2_BOUND:
        # How far the float32 forward alone moves when only its weights are rounded to bf16.
        rounded = jax.tree.map(lambda p: p.astype(BF16).astype(F32), params)
        moved = _rel_l2(_compile(lambda p, x: _forward(layer32, p, x)[0], rounded, x), y32)
        pytest.fail(
            f"{name}: bf16 forward is {err:.2e} from float32 (bound {REL_L2_BOUND}); the float32 "
            f"forward moves {moved:.2e} when only its weights are rounded to bf16. Compute the "
            "delicate parts (softmax, norms, scans, decays, convolutions, cumsums) in float32; "
            "if the float32 forward is itself that ill-conditioned, compare a well-conditioned "
            "config (COMPARED_CONFIG) and say why")


def _bf16_primitives(jaxpr, found):
    """Adds to `found` every primitive of `jaxpr` (and its sub-jaxprs) with a bf16 operand."""
    for eqn in jaxpr.eqns:
        if any(getattr(v.aval, "dtype", None) == BF16 for v in eqn.invars):
            found.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jex.core.ClosedJaxpr):
                    sub = sub.jaxpr
                if isinstance(sub, jex.core.Jaxpr):
                    _bf16_primitives(sub, found)
    return found


def _is_container(primitive_name):
    return primitive_name in ("jit", "pjit", "closed_call", "custom_jvp_call", "custom_vjp_call",
                              "custom_vjp_call_jaxpr", "remat", "checkpoint")


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_bf16_forward_keeps_delicate_ops_in_float32(name):
    """The traced bf16 forward of the registered config: only BF16_PRIMITIVES see bf16."""
    layer32, layer16 = layers.make_layer(name), layers.make_layer(name, dtype=BF16)
    x = jax.ShapeDtypeStruct((BATCH, SEQ_LEN, _width(name)), BF16)
    params = jax.eval_shape(lambda x: layer32.init(jax.random.key(1), x)["params"], x)
    closed = jax.make_jaxpr(lambda p, x: _forward(layer16, p, x)[0])(params, x)
    # Containers (jit, custom_jvp_call, ...) are walked into; their own names do not count.
    found = {p for p in _bf16_primitives(closed.jaxpr, set()) if not _is_container(p)}
    assert found <= BF16_PRIMITIVES, (
        f"{name}: the bf16 forward runs {sorted(found - BF16_PRIMITIVES)} on bf16 operands; "
        "upcast to float32 around them (or, for a new matmul-like or elementwise primitive, "
        "add it to BF16_PRIMITIVES)")


@pytest.mark.parametrize("name", sorted(COMPARED_CONFIG))
def test_registered_config_of_ill_conditioned_layer_runs_in_bf16(name):
    layer32, layer16 = layers.make_layer(name), layers.make_layer(name, dtype=BF16)
    x = _bf16_input(_width(name))

    def program(x):
        params = layer32.init(jax.random.key(1), x)["params"]
        return _bf16_forward_and_grads(layer16, params, x)

    y16, grads = _compile(program, x)
    assert y16.dtype == BF16 and np.all(np.isfinite(np.asarray(y16, np.float32)))
    _check_bf16_grads(name, grads)


# ---------------------------------------------------------------------------------------------
# ops: computed in float32 whatever the input dtype, so a bf16 call returns the float32 result
# rounded once to bf16 (at most u = 2^-8 relative per element).


def _op_inputs(seed, *shapes, scale=1.0):
    """bf16 arrays ~ N(0, scale^2) (numpy's generator: no programs to compile)."""
    rng = np.random.default_rng(seed)
    return [jnp.asarray(scale * rng.standard_normal(s, np.float32), BF16) for s in shapes]


def _assert_rounded_once(name, fn, *args):
    """fn on bf16 args returns bf16 within one rounding of fn on the same values in float32."""
    args32 = [None if a is None else a.astype(F32) for a in args]
    y16, y32 = _compile(lambda a16, a32: (fn(*a16), fn(*a32)), args, args32)
    assert y16.dtype == BF16, f"{name} returned {y16.dtype} for bf16 inputs"
    y16, y32 = np.asarray(y16, np.float32), np.asarray(y32, np.float32)
    np.testing.assert_array_less(np.abs(y16 - y32), 2.0 ** -8 * np.abs(y32) + 1e-30,
                                 err_msg=f"{name}: bf16 call is not the float32 result rounded")


def test_causal_conv_bf16_is_float32_rounded():
    x, h = _op_inputs(0, (BATCH, SEQ_LEN, 8), (SEQ_LEN, 8))
    _assert_rounded_once("causal_conv", functools.partial(ops.causal_conv, impl="xla"), x, h)


def test_selective_scan_bf16_is_float32_rounded():
    x, dt, a, b, c = _op_inputs(1, (BATCH, SEQ_LEN, 8), (BATCH, SEQ_LEN, 8), (8, 4),
                                (BATCH, SEQ_LEN, 4), (BATCH, SEQ_LEN, 4))
    dt = jnp.asarray(np.logaddexp(0.0, np.asarray(dt, np.float32)), BF16)  # softplus: dt > 0
    args = (x, dt, -jnp.exp(jnp.asarray(a, F32)), b, c)
    for fn in (functools.partial(ops.selective_scan, impl="xla"), ops.selective_scan_sequential):
        _assert_rounded_once("selective_scan", fn, *args)


@pytest.mark.parametrize("decay, bonus", [(False, False), (True, False), (True, True)])
def test_linear_attention_bf16_is_float32_rounded(decay, bonus):
    """40 steps in chunks of 16: the float32 state crosses chunks (and sub-chunks)."""
    shape = (BATCH, 2, 40, 8)
    q, k, v, g, u = _op_inputs(2, shape, shape, shape, shape, (2, 8), scale=0.5)
    log_decay = jnp.asarray(-np.exp(np.asarray(g, np.float32)), BF16) if decay else None
    chunked = functools.partial(ops.linear_attention, chunk_size=16, impl="xla")
    for fn in (chunked, ops.linear_attention_recurrent):
        def call(q, k, v, log_decay, bonus_hk, fn=fn):
            return fn(q, k, v, log_decay_BxHxLxK=log_decay, bonus_HxK=bonus_hk)
        _assert_rounded_once("linear_attention", call, q, k, v, log_decay, u if bonus else None)


def test_causal_conv_kernel_path_gets_float32_operands(monkeypatch):
    """A bf16 input must not make the conv kernel run bf16 products with a bf16-rounded filter."""
    seen = []

    def kernel(x, h):
        seen.append((x.dtype, h.dtype))
        return x

    monkeypatch.setattr(pallas_kernels, "causal_conv", kernel)
    x, h = _op_inputs(3, (1, 8, 2), (8, 2))
    y = ops.causal_conv(x, h, impl="pallas")
    assert seen == [(F32, F32)] and y.dtype == BF16


# ---------------------------------------------------------------------------------------------
# built models


def test_built_bf16_model_of_every_layer_has_float32_parameters_and_logits():
    """Shapes and dtypes only (abstract evaluation): every registered layer in one hybrid."""
    model = models.build(LAYER_NAMES, vocab_size=VOCAB, max_length=SEQ_LEN, dim=128, dtype=BF16)
    tokens = jax.ShapeDtypeStruct((BATCH, SEQ_LEN), jnp.int32)
    logits, variables = jax.eval_shape(
        lambda t: model.init_with_output(jax.random.key(0), t, mutable=["params", "losses"]),
        tokens)
    params = _leaves(variables["params"])
    assert params and all(p.dtype == F32 for p in params)
    assert logits.dtype == F32 and logits.shape == (BATCH, SEQ_LEN, VOCAB)


@pytest.mark.parametrize("backbone", ["language-model", "autoencoder"])
def test_built_bf16_model_is_close_to_float32_with_float32_gradients(backbone):
    kw = dict(vocab_size=VOCAB, max_length=SEQ_LEN, dim=32, backbone=backbone)
    model16, model32 = models.build("mlp", dtype=BF16, **kw), models.build("mlp", **kw)
    tokens = jax.random.randint(jax.random.key(3), (BATCH, SEQ_LEN), 0, VOCAB)

    def program(tokens):
        params = model16.init(jax.random.key(0), tokens)["params"]

        def loss(params):
            logits = model16.apply({"params": params}, tokens)
            log_probs = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)), logits

        (_, logits16), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return params, logits16, model32.apply({"params": params}, tokens), grads

    params, logits16, logits32, grads = _compile(program, tokens)
    assert _leaves(params) and all(p.dtype == F32 for p in _leaves(params))
    assert logits16.dtype == F32 and np.all(np.isfinite(np.asarray(logits16)))
    _check_bf16_grads(backbone, grads)
    # bf16 did run (the logits differ), within the per-layer bound: embedding, norms, one block
    # and the unembedding are a chain of roundings as above.
    assert 0 < _rel_l2(logits16, logits32) < REL_L2_BOUND

"""mad_jax.ops.delta_rule: the chunked (gated) delta rule and the generalised delta rule against
float64 step-by-step recurrences in numpy."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import ops

B, H, K, V = 1, 2, 8, 6
CHUNK = 16


def _numpy_delta_rule(q, k, v, beta, g):
    """S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = q_t^T S_t (f64)."""
    batch, heads, seq_len, dk = q.shape
    o = np.zeros(q.shape[:3] + (v.shape[-1],))
    for b in range(batch):
        for h in range(heads):
            s = np.zeros((dk, v.shape[-1]))
            for t in range(seq_len):
                kt = k[b, h, t]
                transition = np.exp(g[b, h, t]) * (np.eye(dk) - beta[b, h, t] * np.outer(kt, kt))
                s = transition @ s + beta[b, h, t] * np.outer(kt, v[b, h, t])
                o[b, h, t] = q[b, h, t] @ s
    return o


def _numpy_generalized(q, k, v, a, b_vec, g):
    """S_t = (diag(exp(g_t)) + a_t b_t^T) S_{t-1} + k_t v_t^T, o_t = q_t^T S_t, float64."""
    batch, heads, seq_len, dk = q.shape
    o = np.zeros(q.shape[:3] + (v.shape[-1],))
    for bi in range(batch):
        for h in range(heads):
            s = np.zeros((dk, v.shape[-1]))
            for t in range(seq_len):
                transition = np.diag(np.exp(g[bi, h, t])) + np.outer(a[bi, h, t], b_vec[bi, h, t])
                s = transition @ s + np.outer(k[bi, h, t], v[bi, h, t])
                o[bi, h, t] = q[bi, h, t] @ s
    return o


def _inputs(seq_len, gate_scale, seed=0):
    """float64 numpy inputs: unit-norm keys, beta in (0, 1), log gates in [-gate_scale, 0]."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, seq_len, K))
    k = rng.standard_normal((B, H, seq_len, K))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, H, seq_len, V))
    beta = 1 / (1 + np.exp(-2 * rng.standard_normal((B, H, seq_len))))
    g = -gate_scale * rng.random((B, H, seq_len))
    return q, k, v, beta, g


def _f32(*arrays):
    return [jnp.asarray(a, jnp.float32) for a in arrays]


@functools.lru_cache(maxsize=None)
def _chunked_fn():
    return jax.jit(functools.partial(ops.delta_rule, chunk_size=CHUNK, impl="xla"))


# 32 = two whole chunks, 37 = a padded last chunk; gates: none, moderate, strong (down to -20).
@pytest.mark.parametrize("seq_len", [32, 37])
@pytest.mark.parametrize("gate_scale", [None, 1.0, 20.0])
def test_chunked_matches_float64_recurrence(seq_len, gate_scale):
    q, k, v, beta, g = _inputs(seq_len, gate_scale or 0.0)
    expected = _numpy_delta_rule(q, k, v, beta, g)
    gate = None if gate_scale is None else jnp.asarray(g, jnp.float32)
    chunked = np.asarray(_chunked_fn()(*_f32(q, k, v, beta), log_gate_BxHxL=gate))
    recurrent = np.asarray(jax.jit(ops.delta_rule_recurrent)(*_f32(q, k, v, beta),
                                                             log_gate_BxHxL=gate))
    scale = np.abs(expected).max()
    assert np.all(np.isfinite(chunked))
    np.testing.assert_allclose(chunked, expected, atol=1e-5 * scale, rtol=1e-4)
    np.testing.assert_allclose(recurrent, expected, atol=1e-5 * scale, rtol=1e-4)


def test_strong_gates_forget_and_stay_finite():
    """A gate of -30 at step t wipes the state: the output at t is the current token's write."""
    q, k, v, beta, g = _inputs(37, 1.0, seed=1)
    g[..., 20] = -30.0
    gate = jnp.asarray(g, jnp.float32)
    out = np.asarray(_chunked_fn()(*_f32(q, k, v, beta), log_gate_BxHxL=gate))
    qk = np.sum(q[..., 20, :] * k[..., 20, :], -1)
    alone = (beta[..., 20] * qk)[..., None] * v[..., 20, :]
    np.testing.assert_allclose(out[..., 20, :], alone, atol=1e-5)
    np.testing.assert_allclose(out, _numpy_delta_rule(q, k, v, beta, g), atol=2e-5, rtol=1e-4)


def test_gradients_of_chunked_and_recurrent_agree():
    q, k, v, beta, g = _f32(*_inputs(37, 3.0, seed=2))
    weights = jnp.asarray(np.random.default_rng(3).standard_normal((B, H, 37, V)), jnp.float32)

    def loss(fn):
        def f(q, k, v, beta, g):
            return jnp.sum(weights * fn(q, k, v, beta, log_gate_BxHxL=g))
        return jax.grad(f, argnums=(0, 1, 2, 3, 4))

    chunked = jax.jit(loss(functools.partial(ops.delta_rule_chunked, chunk_size=CHUNK)))(
        q, k, v, beta, g)
    recurrent = jax.jit(loss(ops.delta_rule_recurrent))(q, k, v, beta, g)
    for name, a, b in zip("q k v beta g".split(), chunked, recurrent):
        assert np.all(np.isfinite(np.asarray(a))), name
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5 * np.abs(b).max(),
                                   rtol=1e-4, err_msg=name)


def test_short_sequences_and_chunk_longer_than_sequence():
    for seq_len in (1, 5):
        q, k, v, beta, g = _inputs(seq_len, 2.0, seed=seq_len)
        out = _chunked_fn()(*_f32(q, k, v, beta), log_gate_BxHxL=jnp.asarray(g, jnp.float32))
        np.testing.assert_allclose(np.asarray(out), _numpy_delta_rule(q, k, v, beta, g),
                                   atol=1e-5, rtol=1e-4)


def test_bf16_inputs_return_bf16_and_dispatch():
    q, k, v, beta, _ = _inputs(8, 0.0)
    args16 = [jnp.asarray(a, jnp.bfloat16) for a in (q, k, v, beta)]
    out = jax.jit(functools.partial(ops.delta_rule, impl="auto"))(*args16)
    assert out.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(out, np.float32)))
    if jax.default_backend() == "cpu":  # the kernel runs natively on GPU only
        import pallas_kernels

        with pytest.raises(pallas_kernels.UnsupportedShapeError):
            ops.delta_rule(*args16, impl="pallas")
    with pytest.raises(ValueError, match="chunk_size"):
        ops.delta_rule_chunked(*args16, chunk_size=0)


def test_generalized_delta_rule_matches_float64_recurrence():
    """RWKV-7-like inputs: vector decays down to exp(-20), a = -(rate * kappa), b = kappa."""
    rng = np.random.default_rng(4)
    q, k, v, _, _ = _inputs(13, 0.0, seed=4)
    kappa = rng.standard_normal(q.shape)
    kappa /= np.linalg.norm(kappa, axis=-1, keepdims=True)
    rate = rng.random(q.shape)
    g = -20.0 * rng.random(q.shape) ** 3
    expected = _numpy_generalized(q, k, v, -rate * kappa, kappa, g)
    out = jax.jit(ops.generalized_delta_rule)(*_f32(q, k, v, -rate * kappa, kappa),
                                              log_decay_BxHxLxK=jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5 * np.abs(expected).max(),
                               rtol=1e-4)


def test_generalized_delta_rule_contains_the_gated_delta_rule():
    """exp(g)(I - beta k k^T) S + beta k v^T is diag(exp(g)) + a b^T with a = -exp(g) beta k,
    b = k, and key beta k."""
    q, k, v, beta, g = _inputs(11, 2.0, seed=5)
    decay = np.exp(g)[..., None]
    out = jax.jit(ops.generalized_delta_rule_recurrent)(
        *_f32(q, beta[..., None] * k, v, -decay * beta[..., None] * k, k),
        log_decay_BxHxLxK=jnp.asarray(np.broadcast_to(g[..., None], q.shape), jnp.float32))
    np.testing.assert_allclose(np.asarray(out), _numpy_delta_rule(q, k, v, beta, g), atol=1e-5,
                               rtol=1e-4)

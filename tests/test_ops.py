"""The pure-jnp references of mad_jax.ops against naive O(L^2) / loop implementations."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import ops

RTOL = 2e-5  # float32 in, float32 out

# Jitted entry points: eager op-by-op dispatch would dominate these tiny tests.
_la = jax.jit(ops.linear_attention, static_argnames=("chunk_size", "impl"))
_la_rec = jax.jit(ops.linear_attention_recurrent)


def _rand(seed, shape, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# causal conv


def naive_causal_conv(x, h):
    x = np.asarray(x, np.float64)
    h = np.asarray(h, np.float64)
    batch, seq_len, dim = x.shape
    y = np.zeros_like(x)
    for t in range(seq_len):
        for s in range(max(0, t - h.shape[0] + 1), t + 1):
            y[:, t] += h[t - s] * x[:, s]
    return y


def test_fft_size_is_the_smallest_fast_length_without_wrap_around():
    assert [ops.fft_size(L) for L in (1, 2, 7, 16, 127, 128, 1000)] == [1, 3, 15, 32, 256, 256,
                                                                         2000]
    for L in range(1, 300):
        n = ops.fft_size(L)
        assert n >= 2 * L - 1
        assert all(not _smooth(m) for m in range(2 * L - 1, n)) and _smooth(n)


def _smooth(n):
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


@pytest.mark.parametrize("seq_len,filter_len", [(1, 1), (7, 7), (16, 16), (13, 5), (32, 1),
                                                (127, 127), (122, 40)])
def test_fft_causal_conv_matches_naive(seq_len, filter_len):
    x = _rand(0, (2, seq_len, 3))
    h = _rand(1, (filter_len, 3))
    want = naive_causal_conv(x, h)
    np.testing.assert_allclose(ops.fft_causal_conv(x, h), want, rtol=RTOL, atol=1e-4)
    np.testing.assert_allclose(ops.causal_conv(x, h, impl="xla"), want, rtol=RTOL, atol=1e-4)


def test_causal_conv_dtype_and_errors():
    x = jnp.asarray(_rand(0, (1, 8, 2)), jnp.bfloat16)
    assert ops.causal_conv(x, _rand(1, (8, 2)), impl="xla").dtype == jnp.bfloat16
    with pytest.raises(ValueError):
        ops.causal_conv(x, _rand(1, (9, 2)), impl="xla")


# ---------------------------------------------------------------------------------------------
# selective scan


def naive_selective_scan(x, dt, A, B, C):
    x, dt, A, B, C = (np.asarray(a, np.float64) for a in (x, dt, A, B, C))
    batch, seq_len, dim = x.shape
    h = np.zeros((batch, dim, A.shape[1]))
    ys = []
    for t in range(seq_len):
        h = np.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append(np.einsum("bdn,bn->bd", h, C[:, t]))
    return np.stack(ys, axis=1)


def _scan_inputs(seed, batch, seq_len, dim, n_state):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, seq_len, dim)).astype(np.float32)
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), (batch, seq_len, dim))).astype(np.float32)
    A = -np.exp(rng.standard_normal((dim, n_state))).astype(np.float32)
    B = rng.standard_normal((batch, seq_len, n_state)).astype(np.float32)
    C = rng.standard_normal((batch, seq_len, n_state)).astype(np.float32)
    return x, dt, A, B, C


@pytest.mark.parametrize("seq_len", [1, 2, 7, 33])
def test_selective_scan_matches_naive(seq_len):
    args = _scan_inputs(seq_len, 2, seq_len, 5, 4)
    want = naive_selective_scan(*args)
    np.testing.assert_allclose(jax.jit(ops.associative_selective_scan)(*args), want, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(jax.jit(ops.selective_scan_sequential)(*args), want, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(ops.selective_scan(*args, impl="xla"), want, rtol=1e-4, atol=1e-5)


def test_selective_scan_strong_decay_and_large_dt():
    x, dt, A, B, C = _scan_inputs(3, 1, 20, 3, 2)
    dt = dt * 100.0  # exp(dt A) far below 1e-10: state must not blow up
    want = naive_selective_scan(x, dt, A, B, C)
    np.testing.assert_allclose(jax.jit(ops.associative_selective_scan)(x, dt, A, B, C), want,
                               rtol=1e-4, atol=1e-4)


def test_selective_scan_gradients_agree():
    args = tuple(jnp.asarray(a) for a in _scan_inputs(5, 1, 9, 3, 2))

    def loss(fn):
        return lambda *a: jnp.sum(jnp.sin(fn(*a)))

    g_assoc = jax.jit(jax.grad(loss(ops.associative_selective_scan), argnums=range(5)))(*args)
    g_seq = jax.jit(jax.grad(loss(ops.selective_scan_sequential), argnums=range(5)))(*args)
    for a, b in zip(g_assoc, g_seq):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# linear attention


def naive_linear_attention(q, k, v, log_decay=None, bonus=None):
    """O(L^2) definition: o_t = sum_s q_t diag(exp(G_t - G_s)) k_s^T v_s (+ the RWKV bonus form)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = np.zeros(q.shape) if log_decay is None else np.asarray(log_decay, np.float64)
    G = np.cumsum(g, axis=2)
    seq_len = q.shape[2]
    o = np.zeros(q.shape[:3] + (v.shape[-1],))
    for t in range(seq_len):
        for s in range(t + 1):
            if bonus is None:
                w = np.exp(G[:, :, t] - G[:, :, s])
            elif s < t:
                w = np.exp(G[:, :, t - 1] - G[:, :, s])
            else:
                w = np.broadcast_to(np.asarray(bonus, np.float64)[None], q.shape[:2] + q.shape[3:])
            o[:, :, t] += np.sum(q[:, :, t] * w * k[:, :, s], axis=-1)[..., None] * v[:, :, s]
    return o


def _la_inputs(seed, batch, heads, seq_len, dk, dv, decay_scale=None):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, heads, seq_len, dk)).astype(np.float32)
    k = rng.standard_normal((batch, heads, seq_len, dk)).astype(np.float32)
    v = rng.standard_normal((batch, heads, seq_len, dv)).astype(np.float32)
    g = None
    if decay_scale is not None:
        g = (-decay_scale * rng.uniform(0.0, 1.0, (batch, heads, seq_len, dk))).astype(np.float32)
    return q, k, v, g


LA_CASES = [  # (seq_len, chunk_size, decay_scale, bonus)
    (1, 64, None, False), (5, 4, None, False), (37, 16, None, False),
    (1, 64, 1.0, False), (37, 16, 1.0, False), (50, 64, 0.5, False), (40, 32, 20.0, False),
    (1, 64, 1.0, True), (37, 16, 1.0, True), (50, 64, 0.5, True), (40, 32, 20.0, True),
    (21, 24, 2.0, False), (9, 3, 2.0, True), (19, 8, None, True),
]


@pytest.mark.parametrize("seq_len,chunk_size,decay_scale,bonus", LA_CASES)
def test_linear_attention_matches_naive(seq_len, chunk_size, decay_scale, bonus):
    q, k, v, g = _la_inputs(seq_len, 2, 2, seq_len, 4, 3, decay_scale)
    u = _rand(7, (2, 4)) if bonus else None
    want = naive_linear_attention(q, k, v, g, u)
    got = _la(q, k, v, log_decay_BxHxLxK=g, bonus_HxK=u, chunk_size=chunk_size, impl="xla")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    rec = _la_rec(q, k, v, log_decay_BxHxLxK=g, bonus_HxK=u)
    np.testing.assert_allclose(rec, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seq_len,chunk_size", [(33, 64), (47, 48), (64, 64)])
def test_linear_attention_one_chunk_of_several_sub_chunks_at_width_128(seq_len, chunk_size):
    # One chunk of 3-4 sub-chunks at the GLA layer's width: the shapes that XLA:CPU's YNNPACK
    # fusions in jaxlib 0.10.2 turn into 1e30s and NaNs (mad_jax/xla_cpu_flags.py switches them
    # off), compiled after a gradient of the same function as in a training step.
    q, k, v, _ = _la_inputs(seq_len, 2, 1, seq_len, 128, 128)
    q = q * 128 ** -0.5  # as the layer scales its queries
    g = np.log(1.0 / (1.0 + np.exp(-_rand(5, q.shape)))) / 16.0  # GLA's log-sigmoid gates
    fn = functools.partial(ops.linear_attention_chunked, chunk_size=chunk_size)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a[:3], log_decay_BxHxLxK=a[3]))),
                             argnums=range(4)))(q, k, v, g)
    got = jax.jit(lambda *a: fn(*a[:3], log_decay_BxHxLxK=a[3]))(q, k, v, g)
    want = ops.linear_attention_recurrent(q, k, v, log_decay_BxHxLxK=g)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4)
    want_grads = jax.jit(jax.grad(
        lambda *a: jnp.sum(jnp.sin(ops.linear_attention_recurrent(*a[:3], log_decay_BxHxLxK=a[3]))),
        argnums=range(4)))(q, k, v, g)
    for a, b in zip(grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("bonus", [False, True])
def test_linear_attention_strong_decay_gradients_finite_and_match(bonus):
    q, k, v, g = _la_inputs(11, 1, 2, 70, 4, 3, decay_scale=20.0)
    u = jnp.asarray(_rand(3, (2, 4))) if bonus else None

    def loss(fn, q, k, v, g):
        return jnp.sum(jnp.sin(fn(q, k, v, log_decay_BxHxLxK=g, bonus_HxK=u)))

    chunked = lambda *a, **kw: ops.linear_attention_chunked(*a, chunk_size=64, **kw)  # noqa: E731
    g_chunk = jax.jit(jax.grad(lambda *a: loss(chunked, *a), argnums=range(4)))(q, k, v, g)
    g_rec = jax.jit(jax.grad(lambda *a: loss(ops.linear_attention_recurrent, *a),
                             argnums=range(4)))(q, k, v, g)
    for a, b in zip(g_chunk, g_rec):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_linear_attention_bfloat16_returns_input_dtype():
    q, k, v, g = (jnp.asarray(a, jnp.bfloat16) for a in _la_inputs(0, 1, 1, 10, 4, 4, 1.0))
    assert ops.linear_attention(q, k, v, log_decay_BxHxLxK=g, impl="xla").dtype == jnp.bfloat16


# ---------------------------------------------------------------------------------------------
# dispatch


def test_impl_validation_and_switches():
    with pytest.raises(ValueError, match="kernel impl"):
        ops.set_kernel_impl("cuda")
    with pytest.raises(ValueError, match="kernel impl"):
        ops.causal_conv(np.zeros((1, 2, 1), np.float32), np.zeros((2, 1), np.float32), impl="fast")
    assert ops.get_kernel_impl() == "auto"
    with ops.kernel_impl("xla"):
        assert ops.get_kernel_impl() == "xla"
        with ops.kernel_impl("pallas"):
            assert ops.get_kernel_impl() == "pallas"
        assert ops.get_kernel_impl() == "xla"
    assert ops.get_kernel_impl() == "auto"
    ops.set_kernel_impl("xla")
    try:
        assert ops.get_kernel_impl() == "xla"
    finally:
        ops.set_kernel_impl("auto")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU has no native kernel")
def test_linear_attention_pallas_refuses_cpu():
    import pallas_kernels

    q, k, v, _ = _la_inputs(0, 1, 1, 4, 2, 2)
    with pytest.raises(pallas_kernels.UnsupportedShapeError):
        ops.linear_attention(q, k, v, impl="pallas")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU choice of 'auto'")
def test_auto_uses_reference_on_cpu():
    x = _rand(0, (1, 6, 2))
    h = _rand(1, (6, 2))
    np.testing.assert_array_equal(ops.causal_conv(x, h), ops.fft_causal_conv(x, h))
    args = _scan_inputs(0, 1, 6, 2, 3)
    np.testing.assert_array_equal(ops.selective_scan(*args), ops.associative_selective_scan(*args))

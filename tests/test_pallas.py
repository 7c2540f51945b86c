"""Pallas kernels against the mad_jax.ops references in interpret mode on CPU: values, gradients.

GPU-target kernels (Triton lowering) run in the Pallas HLO interpreter (interpret=True), TPU-target
kernels (Mosaic lowering) in the TPU interpreter (interpret=pltpu.InterpretParams()). Interpret mode
is slow to compile, so each case jits one function that returns the output and all input gradients
(one forward kernel with residuals plus the backward kernels), on small tiles.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

import pallas_kernels as pk
from mad_jax import ops

# max |kernel - reference| / max |reference|, per input dtype. Fixed: never loosen to pass.
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2}

CONV_CFG = pk.CausalConvConfig(block_t=16, block_rows=16, block_lags=16, interpret=True)
SCAN_CFG = pk.SelectiveScanConfig(block_d=8, chunk=4, interpret=True)
CONV_TPU_CFG = pk.CausalConvConfig(block_t=16, block_rows=16, block_lags=16,
                                   interpret=pltpu.InterpretParams())
SCAN_TPU_CFG = pk.SelectiveScanConfig(tpu_block_d=8, tpu_block_t=8, tpu_chunk=4,
                                      interpret=pltpu.InterpretParams())


def _assert_close(got, want, dtype, what):
    got = np.asarray(jnp.asarray(got, jnp.float32))
    want = np.asarray(jnp.asarray(want, jnp.float32))
    assert got.shape == want.shape, what
    assert np.all(np.isfinite(got)), what
    scale = max(float(np.max(np.abs(want))), 1e-6)
    err = float(np.max(np.abs(got - want))) / scale
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e} > {TOL[dtype]:.0e}"


def _value_and_grads(fn, args, cotangent_seed=0):
    """Output and vjp of `fn` at args with a fixed random cotangent, jitted once."""
    def run(*args):
        out, vjp = jax.vjp(fn, *args)
        ct = jax.random.normal(jax.random.key(cotangent_seed), out.shape, jnp.float32)
        return out, vjp(ct.astype(out.dtype))
    return jax.jit(run)(*args)


def _compare(kernel_fn, ref_fn, args, dtype, names):
    out, grads = _value_and_grads(kernel_fn, args)
    out_ref, grads_ref = _value_and_grads(ref_fn, args)
    assert out.dtype == out_ref.dtype == args[0].dtype
    _assert_close(out, out_ref, dtype, "output")
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert g.dtype == g_ref.dtype, name
        _assert_close(g, g_ref, dtype, f"d{name}")


# ---------------------------------------------------------------------------------------------
# causal conv


def _conv_args(batch, seq_len, dim, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, seq_len, dim))
    h = rng.standard_normal((seq_len, dim)) / np.sqrt(seq_len)
    return jnp.asarray(x, dtype), jnp.asarray(h, dtype)


@pytest.mark.parametrize("batch,seq_len,dim,dtype", [
    (2, 1, 3, jnp.float32),      # L = 1
    (3, 37, 2, jnp.float32),     # odd L, odd batch, several lag blocks
    (1, 70, 1, jnp.float32),     # batch 1: one row per time block
    (2, 45, 3, jnp.bfloat16),
])
def test_causal_conv_matches_reference(batch, seq_len, dim, dtype):
    args = _conv_args(batch, seq_len, dim, dtype)
    _compare(lambda x, h: pk.causal_conv(x, h, config=CONV_CFG), ops.fft_causal_conv, args, dtype,
             ("x", "h"))


@pytest.mark.parametrize("batch,seq_len,dim,dtype", [
    (3, 37, 2, jnp.float32),     # batch padded to 8 rows, several lag blocks
    (9, 20, 2, jnp.bfloat16),    # batch > 8
])
def test_causal_conv_tpu_kernel_matches_reference(batch, seq_len, dim, dtype):
    args = _conv_args(batch, seq_len, dim, dtype)
    _compare(lambda x, h: pk.causal_conv(x, h, config=CONV_TPU_CFG), ops.fft_causal_conv, args,
             dtype, ("x", "h"))


def test_causal_conv_mixed_dtypes_keep_filter_dtype():
    x, _ = _conv_args(2, 20, 2, jnp.bfloat16)
    _, h = _conv_args(2, 20, 2, jnp.float32)
    out, (dx, dh) = _value_and_grads(lambda x, h: pk.causal_conv(x, h, config=CONV_CFG), (x, h))
    assert out.dtype == dx.dtype == jnp.bfloat16 and dh.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# selective scan


def _scan_args(batch, seq_len, dim, n_state, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, seq_len, dim))
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), (batch, seq_len, dim)))
    A = -np.exp(rng.uniform(0.0, 1.0, (dim, n_state))) * np.arange(1, n_state + 1)
    B = rng.standard_normal((batch, seq_len, n_state))
    C = rng.standard_normal((batch, seq_len, n_state))
    return tuple(jnp.asarray(a, dtype) for a in (x, dt, A, B, C))


@pytest.mark.parametrize("batch,seq_len,dim,n_state,dtype", [
    (2, 1, 3, 2, jnp.float32),    # L = 1
    (2, 37, 12, 5, jnp.float32),  # odd L, D not a multiple of the block, N not a power of two
    (1, 19, 8, 4, jnp.bfloat16),
])
def test_selective_scan_matches_reference(batch, seq_len, dim, n_state, dtype):
    args = _scan_args(batch, seq_len, dim, n_state, dtype)
    _compare(lambda *a: pk.selective_scan(*a, config=SCAN_CFG), ops.associative_selective_scan,
             args, dtype, ("x", "dt", "A", "B", "C"))


def test_selective_scan_tpu_kernel_matches_reference():
    args = _scan_args(2, 37, 12, 5, jnp.float32)  # several grid steps in time, padded D and N
    _compare(lambda *a: pk.selective_scan(*a, config=SCAN_TPU_CFG), ops.associative_selective_scan,
             args, jnp.float32, ("x", "dt", "A", "B", "C"))


def test_selective_scan_strong_decay():
    x, dt, A, B, C = _scan_args(1, 13, 8, 4, jnp.float32, seed=3)
    args = (x, dt * 200.0, A, B, C)  # exp(dt A) underflows towards 0: no NaN, same result
    _compare(lambda *a: pk.selective_scan(*a, config=SCAN_CFG), ops.associative_selective_scan,
             args, jnp.float32, ("x", "dt", "A", "B", "C"))


# ---------------------------------------------------------------------------------------------
# linear attention (GLA) and the delta rule: K = V = 16 (the GPU kernels' smallest matmul side)

LA_CFG = pk.LinearAttentionConfig(chunk=8, interpret=True)
DELTA_CFG = pk.DeltaRuleConfig(chunk=8, interpret=True)


def _mixed_log_decay(rng, shape):
    """Per-step log decays from -1e-3 to -20 (strong ones underflow exp within a few steps)."""
    return -np.exp(rng.uniform(np.log(1e-3), np.log(20.0), shape))


def _la_args(seq_len, decay, seed=0):
    rng = np.random.default_rng(seed)
    shape = (1, 2, seq_len, 16)
    q, k, v = (rng.standard_normal(shape) / 2 for _ in range(3))
    args = tuple(jnp.asarray(a, jnp.float32) for a in (q, k, v))
    return args + ((jnp.asarray(_mixed_log_decay(rng, shape), jnp.float32),) if decay else ())


def _la_reference(q, k, v, g=None):
    return ops.linear_attention_recurrent(q, k, v, log_decay_BxHxLxK=g)


@pytest.mark.parametrize("seq_len,decay", [
    (37, True),     # not a multiple of the chunk; decays down to -20 per step
    (32, False),    # whole chunks, no decay
])
def test_linear_attention_matches_reference(seq_len, decay):
    args = _la_args(seq_len, decay)
    _compare(lambda *a: pk.linear_attention(*a, config=LA_CFG), _la_reference, args,
             jnp.float32, ("q", "k", "v", "log_decay")[:len(args)])


def test_linear_attention_refuses_bonus_and_dispatch_falls_back(monkeypatch):
    q, k, v, g = _la_args(8, True)
    with pytest.raises(pk.UnsupportedShapeError):
        pk.linear_attention(q, k, v, g, jnp.ones((2, 16)), config=LA_CFG)
    if jax.default_backend() == "cpu":
        with pytest.raises(pk.UnsupportedShapeError):  # forced kernel: no silent fallback
            ops.linear_attention(q, k, v, impl="pallas")
        # "auto" choosing the kernel where it cannot run (CPU without interpret) falls back.
        monkeypatch.setitem(ops.dispatch.AUTO_KERNEL_BACKENDS, "linear_attention", ("cpu",))
        auto = jax.make_jaxpr(lambda *a: ops.linear_attention(*a, chunk_size=8))(q, k, v)
        xla = jax.make_jaxpr(lambda *a: ops.linear_attention(*a, chunk_size=8, impl="xla"))(q, k, v)
        assert str(auto) == str(xla)


def _delta_args(seq_len, gate, seed=0):
    rng = np.random.default_rng(seed)
    shape = (1, 2, seq_len, 16)
    q, v = rng.standard_normal(shape), rng.standard_normal(shape)
    k = rng.standard_normal(shape)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    beta = 1.0 / (1.0 + np.exp(-rng.standard_normal(shape[:3])))
    arrays = (q, k, v, beta) + ((_mixed_log_decay(rng, shape[:3]),) if gate else ())
    return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


def _delta_oracle_numpy(q, k, v, beta, g=None):
    """S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = q_t^T S_t (float64)
    step by step."""
    q, k, v, beta = (np.asarray(a, np.float64) for a in (q, k, v, beta))
    g = np.zeros(beta.shape) if g is None else np.asarray(g, np.float64)
    batch, heads, seq_len, dk = q.shape
    o = np.zeros(v.shape)
    for b in range(batch):
        for h in range(heads):
            s_KxV = np.zeros((dk, v.shape[-1]))
            for t in range(seq_len):
                k_K = k[b, h, t]
                s_KxV = np.exp(g[b, h, t]) * (s_KxV - beta[b, h, t] * np.outer(k_K, k_K @ s_KxV))
                s_KxV = s_KxV + beta[b, h, t] * np.outer(k_K, v[b, h, t])
                o[b, h, t] = q[b, h, t] @ s_KxV
    return o


def _delta_oracle_jax(q, k, v, beta, g):
    """The same recurrence as a lax.scan (differentiable; run under float64)."""
    def step(s_BxHxKxV, xs):
        q_BxHxK, k_BxHxK, v_BxHxV, beta_BxH, g_BxH = xs
        read = jnp.einsum("bhk,bhkv->bhv", k_BxHxK, s_BxHxKxV)
        s_BxHxKxV = jnp.exp(g_BxH)[..., None, None] * (
            s_BxHxKxV - beta_BxH[..., None, None] * k_BxHxK[..., :, None] * read[..., None, :])
        write_BxHxK = beta_BxH[..., None] * k_BxHxK
        s_BxHxKxV = s_BxHxKxV + write_BxHxK[..., :, None] * v_BxHxV[..., None, :]
        return s_BxHxKxV, jnp.einsum("bhk,bhkv->bhv", q_BxHxK, s_BxHxKxV)

    xs = tuple(jnp.moveaxis(a, 2, 0) for a in (q, k, v, beta, g))
    s0 = jnp.zeros(q.shape[:2] + (q.shape[-1], v.shape[-1]), q.dtype)
    return jnp.moveaxis(jax.lax.scan(step, s0, xs)[1], 0, 2)


def test_delta_rule_without_gate_matches_float64_recurrence():
    args = _delta_args(32, gate=False)  # whole chunks
    out = jax.jit(lambda *a: pk.delta_rule(*a, config=DELTA_CFG))(*args)
    _assert_close(out, _delta_oracle_numpy(*args), jnp.float32, "output")


def test_delta_rule_gated_values_and_gradients_match_float64_recurrence():
    args = _delta_args(37, gate=True)  # not a multiple of the chunk; gates down to -20 per step
    out, grads = _value_and_grads(lambda *a: pk.delta_rule(*a, config=DELTA_CFG), args)
    assert out.dtype == jnp.float32 and [g.dtype for g in grads] == [jnp.float32] * 5
    _assert_close(out, _delta_oracle_numpy(*args), jnp.float32, "output")
    with jax.enable_x64(True):
        args64 = tuple(jnp.asarray(np.asarray(a), jnp.float64) for a in args)
        ct = jax.random.normal(jax.random.key(0), out.shape, jnp.float32).astype(jnp.float64)
        grads_ref = jax.jit(lambda *a: jax.vjp(_delta_oracle_jax, *a)[1](ct))(*args64)
    for name, g, g_ref in zip(("q", "k", "v", "beta", "log_gate"), grads, grads_ref):
        _assert_close(g, g_ref, jnp.float32, f"d{name}")


# ---------------------------------------------------------------------------------------------
# errors and dispatch


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU has no native kernel")
def test_kernels_refuse_cpu_without_interpret():
    x, h = _conv_args(1, 8, 2, jnp.float32)
    with pytest.raises(pk.UnsupportedShapeError):
        pk.causal_conv(x, h)
    with pytest.raises(pk.UnsupportedShapeError):
        pk.selective_scan(*_scan_args(1, 8, 2, 2, jnp.float32))
    with pytest.raises(pk.UnsupportedShapeError):  # forced kernel: no silent fallback
        ops.causal_conv(x, h, impl="pallas")
    np.testing.assert_array_equal(ops.causal_conv(x, h, impl="auto"), ops.fft_causal_conv(x, h))


def test_bad_shapes_and_configs_raise():
    x, h = _conv_args(1, 8, 2, jnp.float32)
    with pytest.raises(ValueError):
        pk.causal_conv(x, h[:4], interpret=True)
    with pytest.raises(pk.UnsupportedShapeError):
        pk.causal_conv(x.astype(jnp.int32), h, interpret=True)
    args = _scan_args(1, 8, 2, 2, jnp.float32)
    with pytest.raises(ValueError):
        pk.selective_scan(args[0], args[1], args[2][:, :1], args[3], args[4], interpret=True)
    with pytest.raises(ValueError):
        pk.CausalConvConfig(block_t=24)
    with pytest.raises(ValueError):
        pk.SelectiveScanConfig(chunk=3)


def test_pallas_kernels_does_not_import_mad_jax():
    import subprocess
    import sys

    code = ("import sys, pallas_kernels; "
            "sys.exit(any(m == 'mad_jax' or m.startswith('mad_jax.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------------------------------------
# lowering for real hardware (no device needed: catches Triton / Mosaic lowering errors in CI)


@pytest.mark.parametrize("op,target,dtype", [
    ("causal_conv", "gpu", jnp.float32), ("causal_conv", "tpu", jnp.bfloat16),
    ("selective_scan", "gpu", jnp.bfloat16), ("selective_scan", "tpu", jnp.float32),
])
def test_kernels_lower_for_hardware(op, target, dtype):
    batch, seq_len, dim, n_state = 4, 1000, 256, 16
    seq = jax.ShapeDtypeStruct((batch, seq_len, dim), dtype)
    if op == "causal_conv":
        cfg = pk.CausalConvConfig(target=target)
        fn = lambda x, h: pk.causal_conv(x, h, config=cfg)  # noqa: E731
        args = (seq, jax.ShapeDtypeStruct((seq_len, dim), jnp.float32))
    else:
        cfg = pk.SelectiveScanConfig(target=target)
        fn = lambda *a: pk.selective_scan(*a, config=cfg)  # noqa: E731
        state = jax.ShapeDtypeStruct((batch, seq_len, n_state), dtype)
        args = (seq, seq, jax.ShapeDtypeStruct((dim, n_state), jnp.float32), state, state)
    grads = jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32)), argnums=range(len(args)))
    platform = {"gpu": "cuda", "tpu": "tpu"}[target]
    text = jax.jit(grads).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    marker = "__gpu$xla.gpu.triton" if target == "gpu" else "tpu_custom_call"
    assert text.count(marker) >= 2  # forward (with residuals) and backward kernels


@pytest.mark.parametrize("op,dtype,n_kernels", [
    ("linear_attention", jnp.float32, 2),   # forward (with residuals) and backward kernels
    ("delta_rule", jnp.bfloat16, 1),        # forward kernel; the backward pass is jnp
])
def test_attention_kernels_lower_for_gpu(op, dtype, n_kernels):
    batch, heads, seq_len, dk, dv = 2, 4, 1000, 64, 128
    qk = jax.ShapeDtypeStruct((batch, heads, seq_len, dk), dtype)
    v = jax.ShapeDtypeStruct((batch, heads, seq_len, dv), dtype)
    if op == "linear_attention":
        cfg = pk.LinearAttentionConfig(target="gpu")
        fn = lambda *a: pk.linear_attention(*a, config=cfg)  # noqa: E731
        args = (qk, qk, v, jax.ShapeDtypeStruct(qk.shape, jnp.float32))
    else:
        cfg = pk.DeltaRuleConfig(target="gpu")
        fn = lambda *a: pk.delta_rule(*a, config=cfg)  # noqa: E731
        step = jax.ShapeDtypeStruct((batch, heads, seq_len), jnp.float32)
        args = (qk, qk, v, step, step)
    def value_and_grads(*a):
        out, vjp = jax.vjp(fn, *a)
        return out, vjp(jnp.ones_like(out))

    text = jax.jit(value_and_grads).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == n_kernels

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

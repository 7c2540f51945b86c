"""Native (compiled, not interpreted) runs of the Pallas kernels against the mad_jax.ops references.

On a GPU machine:  python -m pytest -m gpu_only tests/test_pallas_native.py -q
On a TPU machine:  python -m pytest -m tpu_only tests/test_pallas_native.py -q
Skipped elsewhere.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from mad_jax import ops

on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
on_tpu = pytest.mark.skipif(jax.default_backend() != "tpu", reason="needs a TPU")

# max |kernel - reference| / max |reference|. "tf32": float32 operands on reduced-precision matrix
# units (the conv kernel's default precision: TF32 on GPU, bf16 passes on TPU); "float32": exact
# float32 products (precision="highest", and the scans, which never use the matrix units).
TOL = {"float32": 2e-5, "tf32": 5e-3, "bfloat16": 2e-2}

CONV_SHAPES = [(2, 1, 8), (3, 1001, 40), (8, 4096, 64)]
CONV_DTYPES = [(jnp.float32, "highest", "float32"), (jnp.float32, "default", "tf32"),
               (jnp.bfloat16, "default", "bfloat16")]
SCAN_SHAPES = [(2, 1, 8, 4), (3, 1001, 100, 16), (4, 2048, 256, 16), (2, 333, 64, 5)]


def _err(got, want):
    got = np.asarray(jnp.asarray(got, jnp.float32))
    want = np.asarray(jnp.asarray(want, jnp.float32))
    assert got.shape == want.shape and np.all(np.isfinite(got))
    return float(np.max(np.abs(got - want))) / max(float(np.max(np.abs(want))), 1e-6)


def _value_and_grads(fn, args):
    def run(*args):
        out, vjp = jax.vjp(fn, *args)
        ct = jax.random.normal(jax.random.key(0), out.shape, jnp.float32)
        return out, vjp(ct.astype(out.dtype))
    return jax.jit(run)(*args)


def _check(kernel_fn, ref_fn, args, tol_key):
    out, grads = _value_and_grads(kernel_fn, args)
    out_ref, grads_ref = _value_and_grads(ref_fn, args)
    errors = [_err(out, out_ref)] + [_err(g, r) for g, r in zip(grads, grads_ref)]
    assert max(errors) <= TOL[tol_key], f"relative errors (out, grads...): {errors}"


def _conv_args(batch, seq_len, dim, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, seq_len, dim))
    h = rng.standard_normal((seq_len, dim)) / np.sqrt(seq_len)
    return jnp.asarray(x, dtype), jnp.asarray(h, dtype)


def _scan_args(batch, seq_len, dim, n_state, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, seq_len, dim))
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), (batch, seq_len, dim)))
    A = -np.exp(rng.uniform(0.0, 1.0, (dim, n_state))) * np.arange(1, n_state + 1)
    B = rng.standard_normal((batch, seq_len, n_state))
    C = rng.standard_normal((batch, seq_len, n_state))
    return tuple(jnp.asarray(a, dtype) for a in (x, dt, A, B, C))


def _conv_case(batch, seq_len, dim, dtype, precision, tol, **config):
    cfg = pk.CausalConvConfig(precision=precision, **config)
    _check(lambda x, h: pk.causal_conv(x, h, config=cfg), ops.fft_causal_conv,
           _conv_args(batch, seq_len, dim, dtype), tol)


def _scan_case(batch, seq_len, dim, n_state, dtype):
    _check(pk.selective_scan, ops.associative_selective_scan,
           _scan_args(batch, seq_len, dim, n_state, dtype), jnp.dtype(dtype).name)


@pytest.mark.gpu_only
@on_gpu
@pytest.mark.parametrize("batch,seq_len,dim", CONV_SHAPES)
@pytest.mark.parametrize("dtype,precision,tol", CONV_DTYPES)
def test_causal_conv_gpu(batch, seq_len, dim, dtype, precision, tol):
    _conv_case(batch, seq_len, dim, dtype, precision, tol)


@pytest.mark.tpu_only
@on_tpu
@pytest.mark.parametrize("batch,seq_len,dim", CONV_SHAPES)
@pytest.mark.parametrize("dtype,precision,tol", CONV_DTYPES)
def test_causal_conv_tpu(batch, seq_len, dim, dtype, precision, tol):
    _conv_case(batch, seq_len, dim, dtype, precision, tol, block_t=128, block_rows=128,
               block_lags=16)


@pytest.mark.gpu_only
@on_gpu
@pytest.mark.parametrize("batch,seq_len,dim,n_state", SCAN_SHAPES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_selective_scan_gpu(batch, seq_len, dim, n_state, dtype):
    _scan_case(batch, seq_len, dim, n_state, dtype)


@pytest.mark.tpu_only
@on_tpu
@pytest.mark.parametrize("batch,seq_len,dim,n_state", SCAN_SHAPES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_selective_scan_tpu(batch, seq_len, dim, n_state, dtype):
    _scan_case(batch, seq_len, dim, n_state, dtype)


def _attention_args(batch, heads, seq_len, dk, dv, *, decay, delta):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((batch, heads, seq_len, dk)) / np.sqrt(dk)
    k = rng.standard_normal((batch, heads, seq_len, dk))
    v = rng.standard_normal((batch, heads, seq_len, dv))
    if delta:  # normalised keys, beta in (0, 1), scalar gates
        k /= np.linalg.norm(k, axis=-1, keepdims=True)
        beta = 1.0 / (1.0 + np.exp(-rng.standard_normal((batch, heads, seq_len))))
        gate = -np.exp(rng.uniform(np.log(1e-3), np.log(20.0), (batch, heads, seq_len)))
        arrays = (q, k, v, beta) + ((gate,) if decay else ())
    else:
        k /= np.sqrt(dk)
        g = -np.exp(rng.uniform(np.log(1e-3), np.log(20.0), (batch, heads, seq_len, dk)))
        arrays = (q, k, v) + ((g,) if decay else ())
    return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


ATTENTION_SHAPES = [(2, 2, 1, 16, 16), (2, 3, 1001, 64, 64), (4, 4, 2048, 128, 128),
                    (1, 2, 333, 40, 24)]
ATTENTION_PRECISIONS = [("highest", "float32"), ("default", "tf32")]


def _linear_attention_case(shape, decay, precision, tol):
    cfg = pk.LinearAttentionConfig(precision=precision)
    _check(lambda *a: pk.linear_attention(*a, config=cfg),
           lambda q, k, v, g=None: ops.linear_attention_chunked(q, k, v, log_decay_BxHxLxK=g),
           _attention_args(*shape, decay=decay, delta=False), tol)


def _delta_rule_case(shape, decay, precision, tol):
    from mad_jax.ops.delta_rule import delta_rule_chunked

    cfg = pk.DeltaRuleConfig(precision=precision)
    _check(lambda *a: pk.delta_rule(*a, config=cfg),
           lambda q, k, v, b, g=None: delta_rule_chunked(q, k, v, b, log_gate_BxHxL=g),
           _attention_args(*shape, decay=decay, delta=True), tol)


@pytest.mark.gpu_only
@on_gpu
@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("precision,tol", ATTENTION_PRECISIONS)
def test_linear_attention_gpu(shape, decay, precision, tol):
    with jax.default_matmul_precision("highest"):  # the reference at float32 accuracy
        _linear_attention_case(shape, decay, precision, tol)


@pytest.mark.gpu_only
@on_gpu
@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("precision,tol", ATTENTION_PRECISIONS)
def test_delta_rule_gpu(shape, decay, precision, tol):
    with jax.default_matmul_precision("highest"):
        _delta_rule_case(shape, decay, precision, tol)


@pytest.mark.tpu_only
@on_tpu
def test_attention_kernels_refuse_tpu():
    args = _attention_args(1, 2, 64, 16, 16, decay=True, delta=False)
    with pytest.raises(pk.UnsupportedShapeError):
        pk.linear_attention(*args)
    with pytest.raises(pk.UnsupportedShapeError):
        pk.delta_rule(*_attention_args(1, 2, 64, 16, 16, decay=True, delta=True))
    y = ops.linear_attention(*args[:3], log_decay_BxHxLxK=args[3])  # "auto": the reference
    assert _err(y, ops.linear_attention_chunked(*args[:3], log_decay_BxHxLxK=args[3])) == 0.0


def _dispatch_case():
    x, h = _conv_args(2, 300, 16, jnp.float32)
    with ops.kernel_impl("pallas"):
        y = jax.jit(ops.causal_conv)(x, h[:100])
    assert _err(y, ops.fft_causal_conv(x, h[:100])) <= TOL["tf32"]
    args = _scan_args(2, 300, 16, 4, jnp.float32)
    y = jax.jit(lambda *a: ops.selective_scan(*a, impl="pallas"))(*args)
    assert _err(y, ops.associative_selective_scan(*args)) <= TOL["float32"]


@pytest.mark.gpu_only
@on_gpu
def test_dispatch_runs_kernels_gpu():
    _dispatch_case()


@pytest.mark.tpu_only
@on_tpu
def test_dispatch_runs_kernels_tpu():
    _dispatch_case()



@pytest.mark.gpu_only
@on_gpu
def test_linear_attention_dispatch_runs_kernel_gpu():
    q, k, v, g = _attention_args(2, 2, 300, 32, 32, decay=True, delta=False)
    y = jax.jit(lambda *a: ops.linear_attention(*a[:3], log_decay_BxHxLxK=a[3], impl="pallas"))(
        q, k, v, g)
    with jax.default_matmul_precision("highest"):
        want = ops.linear_attention_chunked(q, k, v, log_decay_BxHxLxK=g)
    assert _err(y, want) <= TOL["tf32"]

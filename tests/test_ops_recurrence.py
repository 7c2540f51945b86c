"""mad_jax.ops.linear_recurrence (associative scan) and its lax.scan oracle, against a float64
loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import ops


def _inputs(seed, shape):
    """a in (0, 1) with many channels near 1 (long memory), b ~ N(0, 1), h0 ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    a = (1.0 - rng.uniform(0.0, 1.0, shape) ** 4).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    h0 = rng.standard_normal(shape[:1] + shape[2:]).astype(np.float32)
    return a, b, h0


def loop_float64(a, b, h0=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    h = np.zeros(a.shape[:1] + a.shape[2:]) if h0 is None else np.asarray(h0, np.float64)
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("shape", [(2, 1, 3), (2, 37, 5), (1, 64, 2, 3)])
def test_parallel_and_sequential_match_float64_loop(shape):
    a, b, h0 = _inputs(0, shape)
    for fn in (ops.linear_recurrence, ops.linear_recurrence_sequential):
        np.testing.assert_allclose(fn(a, b), loop_float64(a, b), rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(fn(a, b, h0=h0), loop_float64(a, b, h0), rtol=2e-5, atol=2e-5)


def test_gradients_agree_with_sequential():
    a, b, h0 = _inputs(1, (2, 19, 4))
    weights = np.random.default_rng(2).standard_normal(a.shape).astype(np.float32)

    def grads(fn):
        return jax.grad(lambda a, b, h0: jnp.sum(weights * fn(a, b, h0=h0)), argnums=(0, 1, 2))(
            a, b, h0)

    for got, want in zip(grads(ops.linear_recurrence), grads(ops.linear_recurrence_sequential)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bfloat16_inputs_give_the_float32_result_rounded_once():
    a, b, _ = _inputs(3, (2, 33, 4))
    a16, b16 = jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
    h16 = ops.linear_recurrence(a16, b16)
    h32 = np.asarray(ops.linear_recurrence(a16.astype(jnp.float32), b16.astype(jnp.float32)))
    assert h16.dtype == jnp.bfloat16
    np.testing.assert_array_less(np.abs(np.asarray(h16, np.float32) - h32),
                                 2.0 ** -8 * np.abs(h32) + 1e-30)


def test_shape_errors_are_one_line():
    a, b, h0 = _inputs(4, (2, 5, 3))
    with pytest.raises(ValueError, match="share one shape"):
        ops.linear_recurrence(a, b[:, :4])
    with pytest.raises(ValueError, match="h0 must have shape"):
        ops.linear_recurrence(a, b, h0=h0[:1])

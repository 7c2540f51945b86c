"""How the layer tests make inputs, initialise, apply and count a layer: one way for every file.

The jitted functions take the layer as a static argument (flax modules hash by their fields), so
a layer config compiled for one test is reused by every other test that runs it at those shapes.
A context that changes what is traced but is not in jax's cache key (a Python context variable
such as `initializers.linear_init_override`) needs a fresh trace: use `run_jitted` there.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mad_jax.models import count_params


def random_input(shape, seed=0):
    """A float32 N(0, 1) input, e.g. x [B, L, D]."""
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _init(layer, key, x):
    return layer.init(key, x)["params"]


def init_params(layer, x, seed=1):
    """The layer's parameters (unboxed), initialised on the input x [B, L, D]."""
    return nn.unbox(_init(layer, jax.random.key(seed), x))


def init_on_input(layer, shape, seed=0):
    """(params, x): x = random_input(shape, seed), params initialised on it from seed + 1."""
    x = random_input(shape, seed)
    return init_params(layer, x, seed + 1), x


def abstract_params(layer, x):
    """Parameter shapes, still boxed with their logical axes, without computing anything."""
    return jax.eval_shape(layer.init, jax.random.key(1), x)["params"]


def count_layer_params(layer, dim):
    """Number of parameters of the layer at width dim, from shapes only."""
    return count_params(abstract_params(layer, jax.ShapeDtypeStruct((1, 4, dim), jnp.float32)))


@functools.partial(jax.jit, static_argnums=0)
def apply(layer, params, x):
    """y [B, L, D] = layer(x)."""
    return layer.apply({"params": params}, x)


@functools.partial(jax.jit, static_argnums=0)
def apply_sown(layer, params, x):
    """(y, state): state["intermediates"] holds what the layer sowed and every module's output
    (`capture_intermediates`), state["losses"] the sown auxiliary losses, if any."""
    return layer.apply({"params": params}, x, capture_intermediates=True,
                       mutable=["intermediates", "losses"])


def run_jitted(fn, *args):
    """fn compiled for args and run (tests/conftest.py sets the fast-compile flags)."""
    return jax.jit(fn)(*args)


def float64(tree):
    """A tree of arrays as numpy float64, for the numpy oracles."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)

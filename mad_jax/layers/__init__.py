"""Sequence mixers and channel mixers as Flax modules, and the registry of their default configs.

`LAYERS` maps each layer name (as written in hybrid strings) to a `LayerSpec(module, config)`.
Importing this package registers every built-in layer.
"""
from mad_jax.layers.registry import LAYERS, LayerSpec, get_layer_spec, make_layer, register_layer

# Importing each module registers its layers.
from mad_jax.layers import attention  # noqa: F401,E402
from mad_jax.layers import linear_attention  # noqa: F401,E402
from mad_jax.layers import hyena  # noqa: F401,E402
from mad_jax.layers import hyena_experts  # noqa: F401,E402
from mad_jax.layers import mamba  # noqa: F401,E402
from mad_jax.layers import mamba2  # noqa: F401,E402
from mad_jax.layers import mlstm  # noqa: F401,E402
from mad_jax.layers import rwkv  # noqa: F401,E402
from mad_jax.layers import based, rglru  # noqa: F401,E402
from mad_jax.layers import deltanet  # noqa: F401,E402
from mad_jax.layers import rwkv7  # noqa: F401,E402
from mad_jax.layers import channel_mixers  # noqa: F401,E402
from mad_jax.layers import moe  # noqa: F401,E402
from mad_jax.layers import moe_paper  # noqa: F401,E402

__all__ = ["LAYERS", "LayerSpec", "get_layer_spec", "make_layer", "register_layer"]

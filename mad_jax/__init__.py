"""mad_jax: Mechanistic Architecture Design (MAD) for sequence models in JAX/Flax."""
from mad_jax import xla_cpu_flags

xla_cpu_flags.disable_ynn_fusion()  # before any backend starts; see mad_jax/xla_cpu_flags.py

from mad_jax import tasks  # noqa: F401,E402
from mad_jax import ops  # noqa: F401,E402
from mad_jax import layers  # noqa: F401,E402
from mad_jax import models  # noqa: F401,E402

__version__ = "0.1.0"
from mad_jax import training, protocol  # noqa: F401,E402

"""Test-session setup: 8 simulated CPU devices (for sharding tests) and hardware markers."""
import os

# Must happen before jax initialises its backends: every test process sees 8 CPU devices, so the
# sharding tests run in the same process as the rest of the suite.
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

from mad_jax import xla_cpu_flags  # noqa: E402

# The package does this on import too; done here before any test module can start a backend.
xla_cpu_flags.disable_ynn_fusion()


def pytest_collection_modifyitems(config, items):
    backend = jax.default_backend()
    for item in items:
        if "gpu_only" in item.keywords and backend != "gpu":
            item.add_marker(pytest.mark.skip(reason="needs a GPU"))
        if "tpu_only" in item.keywords and backend != "tpu":
            item.add_marker(pytest.mark.skip(reason="needs a TPU"))

"""Test-session setup: 8 simulated CPU devices (for sharding tests), hardware markers, and the
fixtures shared by several test modules."""
import os

# Must happen before jax initialises its backends: every test process sees 8 CPU devices, so the
# sharding tests run in the same process as the rest of the suite.
_flags = ["--xla_force_host_platform_device_count=8"]


def _accelerator_plugin_installed() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None
               for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu"))


# Most test programs run a few times at tiny shapes, so compiling dominates the suite: without
# LLVM optimisation and with the classic elemental emitters XLA:CPU compiles them about 3x faster
# (the optimised HLO, and so every dtype, is the same). Subprocesses the tests start inherit the
# flags. CPU-only installs only; MAD_JAX_TEST_FULL_OPT=1 keeps XLA's default optimisation.
if os.environ.get("MAD_JAX_TEST_FULL_OPT") != "1" and not _accelerator_plugin_installed():
    _flags += ["--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"]
for _flag in _flags:
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
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


@pytest.fixture
def full_precision_matmuls():
    """True float32 matmuls for oracle comparisons (GPUs default to TF32 for float32); a test
    module opts in with `pytestmark = pytest.mark.usefixtures("full_precision_matmuls")`."""
    with jax.default_matmul_precision("highest"):
        yield

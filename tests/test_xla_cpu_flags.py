"""XLA:CPU settings (mad_jax/xla_cpu_flags.py): the flag that switches off YNNPACK fusions, and
the compile options of programs that run once."""
import os

import jax

from mad_jax import xla_cpu_flags


def test_flag_added_once_and_kept_with_other_flags(monkeypatch):
    monkeypatch.setattr(xla_cpu_flags, "_jaxlib_version", lambda: (0, 10, 2))
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_cpu_flags.disable_ynn_fusion(env)
    assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=8 "
                                "--xla_cpu_experimental_ynn_fusion_type=")
    assert not xla_cpu_flags.disable_ynn_fusion(env)  # already there: unchanged
    assert env["XLA_FLAGS"].count("ynn") == 1


def test_users_own_setting_wins(monkeypatch):
    monkeypatch.setattr(xla_cpu_flags, "_jaxlib_version", lambda: (0, 10, 2))
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=foo"}
    assert not xla_cpu_flags.disable_ynn_fusion(env)
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=foo"


def test_unknown_jaxlib_left_alone(monkeypatch):
    # XLA aborts on a flag it does not know, so releases outside the known range get nothing.
    for version in [(0, 9, 0), (0, 12, 0), None]:
        monkeypatch.setattr(xla_cpu_flags, "_jaxlib_version", lambda v=version: v)
        env = {}
        assert not xla_cpu_flags.disable_ynn_fusion(env) and env == {}


def test_this_process_runs_with_the_flag():
    low, high = xla_cpu_flags._KNOWN_RANGE
    if low <= xla_cpu_flags._jaxlib_version() < high:
        assert xla_cpu_flags.YNN_FLAG in os.environ["XLA_FLAGS"]


def test_run_once_programs_skip_llvm_optimisation_on_the_cpu_only():
    assert xla_cpu_flags.run_once_options("cpu") == {"xla_backend_optimization_level": 0}
    assert xla_cpu_flags.run_once_options("gpu") is None
    assert xla_cpu_flags.run_once_options("tpu") is None
    # XLA accepts the option on this backend (it rejects names it does not know).
    options = xla_cpu_flags.run_once_options(xla_cpu_flags.default_platform())
    assert float(jax.jit(lambda x: x * 2 + 1, compiler_options=options)(3.0)) == 7.0


def test_default_platform_follows_the_default_device():
    assert xla_cpu_flags.default_platform() == jax.default_backend()
    with jax.default_device(jax.devices("cpu")[-1]):
        assert xla_cpu_flags.default_platform() == "cpu"
    with jax.default_device("cpu"):  # a platform name
        assert xla_cpu_flags.default_platform() == "cpu"

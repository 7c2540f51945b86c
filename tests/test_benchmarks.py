"""benchmarks/device_report.py at tiny sizes on CPU (so it never rots), and
benchmarks/reference_step.py's error without a reference checkout."""
import json
import math
import os

import pytest

from benchmarks import device_report, reference_step

TIMES = ("fwd_ms", "fwd_bwd_ms", "fwd_bytes_per_s", "fwd_bwd_bytes_per_s", "fwd_flops_per_s",
         "fwd_bwd_flops_per_s")
FRACTIONS = ("fwd_of_peak_bandwidth", "fwd_bwd_of_peak_bandwidth", "fwd_of_peak_flops",
             "fwd_bwd_of_peak_flops")


def _positive(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_report") / "report.json"
    with pytest.MonkeyPatch.context() as patch:  # --tiny and its imports edit XLA_FLAGS
        patch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
        returned = device_report.main(["--tiny", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["table"] == returned["table"]
    return written


def test_peak_table_knows_the_accelerators_only():
    for kind in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "TPU v4",
                 "TPU v5 lite", "TPU v5p"):
        bandwidth, flops = device_report.table_peaks(kind)
        assert bandwidth > 1e11 and flops["bfloat16"] > 1e14, kind
    assert device_report.table_peaks("NVIDIA H200")[0] == 4.8e12
    assert device_report.table_peaks("cpu") is None
    assert device_report.table_peaks("Some Future Chip") is None


def test_kernels_section(tiny_report):
    rows = tiny_report["kernels"]
    ops = {r["op"] for r in rows}
    assert ops == {"causal_conv", "selective_scan", "linear_attention", "delta_rule"}
    assert {(r["op"], r["impl"]) for r in rows} == {(o, i) for o in ops for i in ("pallas", "xla")}
    for r in rows:
        assert r["error"] is None, r
        assert _positive(*(r[k] for k in TIMES)), r
        # The CPU has no entry in the peak table: fractions are left out, not guessed.
        assert all(r[k] is None for k in FRACTIONS), r
        assert (r["impl"] == "pallas") == (r["speedup_fwd_bwd"] is not None)


def test_protocol_section(tiny_report):
    rows = {r["mode"]: r for r in tiny_report["protocol"]}
    assert set(rows) == set(device_report.MODES)
    for mode, r in rows.items():
        assert r["available"]
        assert _positive(r["compile_s"], r["grid_steps_per_s"], r["run_steps_per_s"],
                         r["s_per_run_step"], r["cpu_s_per_grid_step"]), r
        assert math.isclose(r["run_steps_per_s"], r["runs"] * r["grid_steps_per_s"])
    assert rows["vmapped"]["runs"] == rows["sequential"]["runs"] == 6
    if rows["packed"]["available"]:  # in-context recall: the baseline + 4 training-set sizes
        assert rows["packed"]["runs"] == 6 * tiny_report["protocol_setup"]["packed_settings"] == 30


def test_estimate_section(tiny_report):
    est = tiny_report["estimate"]
    assert (est["settings"], est["runs"], est["max_steps_per_run"]) == (66, 396, 20_000)
    assert est["early_stop"] == 1.0
    for r in est["rows"]:
        if r["available"]:
            assert _positive(r["train_hours"], r["compile_hours"])
            assert math.isclose(r["total_hours"], r["train_hours"] + r["compile_hours"])
    assert "no early stop" in tiny_report["table"]


def test_mfu_section(tiny_report):
    m = tiny_report["mfu"]
    assert m["rung"].startswith("striped-hyena")
    assert _positive(m["params"], m["step_s"], m["tokens_per_s"], m["flops_per_s"],
                     m["measured_matmul_peak_flops_per_s"], m["mfu_of_measured_peak"])
    assert m["table_peak_flops_per_s"] is None and m["mfu_of_table_peak"] is None


def test_table_has_every_section(tiny_report):
    sections = {line.split("|")[1].strip() for line in tiny_report["table"].splitlines()[2:]}
    assert sections == {"kernels", "protocol", "estimate", "mfu"}


def test_reference_step_without_reference_names_the_flag():
    # Checked before torch or the checkout is looked for (the project's environment has no torch).
    with pytest.raises(SystemExit) as exc:
        reference_step.main([])
    message = str(exc.value)
    assert "--reference=" in message and "\n" not in message

"""The Colab demo notebook runs top to bottom (smoke budgets: MAD_DEMO_SMOKE=1) and is committed clean.

The notebook is executed by nbclient in a fresh kernel started with this interpreter
(`sys.executable`, through a kernelspec written to a temporary directory, so a `python3`
kernelspec installed elsewhere on the machine cannot substitute another Python), in a temporary
working directory, with the repository on PYTHONPATH as a checkout user would have it.
"""
import os
import pathlib
import sys

import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "mad_demo.ipynb"
CELL_TIMEOUT_S = 600


def test_committed_notebook_is_valid_and_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, (
            "commit the notebook with outputs cleared:\n" + cell.source[:200])
    assert nb.metadata.kernelspec.name == "python3"


def _kernel_manager(tmp_path):
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path / "kernels"
    write_kernel_spec(kernels / "mad-demo-test")  # argv: [sys.executable, -m, ipykernel_launcher, ...]
    return KernelManager(kernel_name="mad-demo-test",
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))


def _kernel_env(workdir):
    env = dict(os.environ)
    env["MAD_DEMO_SMOKE"] = "1"
    env["MAD_DEMO_WORKDIR"] = str(workdir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # conftest.py gives test processes 8 simulated CPU devices; the notebook runs as a user's would.
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    env.pop("MPLBACKEND", None)
    return env


def test_notebook_runs_top_to_bottom_with_smoke_flag(tmp_path):
    from nbclient import NotebookClient

    run_dir = tmp_path / "cwd"
    run_dir.mkdir()
    workdir = tmp_path / "work"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    km = _kernel_manager(tmp_path)
    assert km.kernel_spec.argv[0] == sys.executable
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(run_dir)}})
    client.execute(env=_kernel_env(workdir))  # raises CellExecutionError on the first failing cell

    text = "\n".join(out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
                     for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "smoke: True" in text
    assert "These are NOT MAD scores" in text
    for task in ("in-context-recall", "memorization"):
        assert task in text
    smoke = workdir / "smoke"
    for arch in ("attention", "striped-hyena-attention", "my-conv-attention", "tiny-lm"):
        assert (smoke / arch / "results.csv").exists(), arch
    assert (smoke / "report.md").exists()
    assert (smoke / "plots" / "mad_scores.png").exists() and (smoke / "curves.png").exists()
    images = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if "image/png" in out.get("data", {})]
    assert len(images) >= 2, "the score chart and the accuracy curves should be displayed"
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.get("output_type") == "error"]
    assert not errors


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

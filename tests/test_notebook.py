"""notebooks/walkthrough.ipynb: committed without outputs, and runs top to bottom on its tiny preset."""

import json
import sys
import time

import nbformat
import pytest

from tests.conftest import ROOT, dataset_available

NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"
KERNEL = "dcgmm-test-venv"  # a kernel spec written for the test, pointing at this interpreter


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for index, cell in enumerate(code):
        assert cell.outputs == [], f"code cell {index} has outputs; strip them before committing"
        assert cell.execution_count is None, f"code cell {index} has an execution count; strip it"
    assert "DCGMM_NOTEBOOK_TINY" in code[0].source, "the first cell must define the parameters (TINY preset)"
    assert "widgets" not in nb.metadata


@pytest.mark.skipif(
    not (dataset_available("mnist") and dataset_available("fashion")), reason="dataset caches missing: run `make setup`"
)
def test_notebook_runs_top_to_bottom_on_the_tiny_preset(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # A kernel spec for this interpreter (the venv's python), found first through JUPYTER_PATH, so the
    # notebook never runs under another python that happens to own a "python3" kernel spec.
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "dcgmm test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # figures are drawn, nothing opens a window
    monkeypatch.setenv("DCGMM_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable); print(TINY)"))
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(ROOT / "notebooks")}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the failing cell
    seconds = time.perf_counter() - start

    last = nb.cells[-1].outputs[0]["text"].split()
    assert last == [sys.executable, "True"], f"the kernel ran {last[0]}, not this test's python {sys.executable}"
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == "error"]
    assert not errors
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "AUROC" in text and "identical scores after loading: True" in text
    assert seconds < 120, f"the tiny preset took {seconds:.0f} s; keep it well under 2 minutes"

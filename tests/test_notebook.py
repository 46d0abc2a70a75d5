"""notebooks/walkthrough.ipynb: committed with the outputs of its full run (``make notebook``), title
first, and still runs top to bottom on its tiny preset."""

import importlib.util
import sys
import time

import nbformat
import pytest

from tests.conftest import ROOT, dataset_available

NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"


def load_runner():
    """``scripts/run_notebook.py`` (what ``make notebook`` runs) imported as a module."""
    spec = importlib.util.spec_from_file_location("run_notebook", ROOT / "scripts" / "run_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outputs_text(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


def test_committed_notebook_opens_with_its_title_and_holds_the_outputs_of_a_full_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "the notebook must open with its title"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert "DCGMM_NOTEBOOK_TINY" in code[0].source, "the first code cell must define the parameters (TINY preset)"
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), f"run the notebook top to bottom with `make notebook` (execution counts {counts})"
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, f"the committed notebook holds an error: {errors[0].get('ename')}"
    figures = [out for cell in code for out in cell.outputs if "image/png" in out.get("data", {})]
    assert len(figures) >= 4, "the committed notebook should show its figures (prototypes, samples, in-painting, scores)"
    text = outputs_text(nb)
    assert "AUROC" in text and "identical scores after loading: True" in text
    assert "on 540 images" not in text, "the committed outputs come from the tiny preset; run `make notebook`"
    assert "widgets" not in nb.metadata
    assert not any("execution" in cell.metadata for cell in code), "volatile cell timings are stripped"


@pytest.mark.skipif(
    not (dataset_available("mnist") and dataset_available("fashion")), reason="dataset caches missing: run `make setup`"
)
def test_notebook_runs_top_to_bottom_on_the_tiny_preset():
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable); print(TINY)"))
    start = time.perf_counter()
    load_runner().execute(nb, NOTEBOOK.parent, tiny=True)  # raises CellExecutionError naming the failing cell
    seconds = time.perf_counter() - start

    last = nb.cells[-1].outputs[0]["text"].split()
    assert last == [sys.executable, "True"], f"the kernel ran {last[0]}, not this test's python {sys.executable}"
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == "error"]
    assert not errors
    text = outputs_text(nb)
    assert "AUROC" in text and "identical scores after loading: True" in text
    assert seconds < 120, f"the tiny preset took {seconds:.0f} s; keep it well under 2 minutes"

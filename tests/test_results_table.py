"""scripts/results_table.py: the tiny preset end to end, the Markdown table it writes, the plan of
the small preset (K and parameter matching, without training) and its command-line errors."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT, dataset_available

SCRIPT = ROOT / "scripts" / "results_table.py"
needs_mnist = pytest.mark.skipif(not dataset_available("mnist"), reason="MNIST cache missing: run `make setup`")


@pytest.fixture(scope="module")
def results_table():
    spec = importlib.util.spec_from_file_location("results_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """``{section title: rows}`` of every Markdown table under a ``## `` heading (rows as cell lists,
    the header row first, the separator row second)."""
    tables: dict[str, list[list[str]]] = {}
    section = None
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("|") and section is not None:
            assert line.endswith("|"), line
            tables.setdefault(section, []).append([cell.strip() for cell in line.strip("|").split("|")])
    return tables


def number(cell: str) -> float | None:
    return None if cell == "–" else float(cell.replace(",", ""))


RANGES = {
    "purity": (0, 1), "NMI": (0, 1), "ARI": (-1, 1), "Hung. acc": (0, 1), "clf acc": (0, 1), "NDB/B": (0, 1),
    "JS": (0, math.log(2) + 1e-6), "AUROC 0": (0, 1), "AUROC mean": (0, 1), "σ end": (0, 100), "σ end (outl.)": (0, 100),
}


@needs_mnist
def test_tiny_preset_writes_a_well_formed_table(results_table, tmp_path):
    results_md = ROOT / "results" / "RESULTS.md"
    before = results_md.stat().st_mtime_ns if results_md.exists() else None

    assert results_table.main(["--preset", "tiny", "--out", str(tmp_path)]) == 0

    text = (tmp_path / "RESULTS.md").read_text()
    for words in ("preset `tiny`", "epochs", "data, MNIST", "held out", "machine", "cores", "torch", "date", "total wall time"):
        assert words in text, words
    tables = markdown_tables(text)
    assert list(tables) == ["MNIST"]  # the tiny preset runs MNIST only; "Columns"/"Rows" hold no table
    header, separator, *rows = tables["MNIST"]
    assert header[:3] == ["model", "K", "params"] and header[-2:] == ["train s", "img/s"]
    assert "AUROC 0" in header and "AUROC mean" in header and "NDB/B" in header
    assert all(set(cell) <= set("-:") and cell for cell in separator) and len(separator) == len(header)
    assert [row[0] for row in rows] == ["B (dcgmm2)", "A flat, K as B", "EM (sklearn), K as B"]
    for row in rows:
        assert len(row) == len(header), row
        cells = dict(zip(header, row))
        assert number(cells["K"]) == 36 and number(cells["K (outl.)"]) == 49  # topology B: top K 36; outliers: 49
        assert number(cells["params"]) > 0 and number(cells["train s"]) >= 0 and number(cells["img/s"]) > 0
        for column, (low, high) in RANGES.items():
            value = number(cells[column])
            assert value is None or low <= value <= high, (row[0], column, value)
        for column in ("purity", "NMI", "ARI", "NDB/B", "JS", "AUROC 0"):
            assert number(cells[column]) is not None, (row[0], column)  # measured for every row
    b, flat, em = (dict(zip(header, row)) for row in rows)
    assert number(b["params"]) > number(flat["params"])  # the flat GMM with the same K is much smaller
    assert em["clf acc"] == "–" and number(b["clf acc"]) is not None

    payload = json.loads((tmp_path / "tiny.json").read_text())
    assert payload["preset"] == "tiny" and payload["meta"]["machine"]["torch"]
    assert len(payload["rows"]["mnist"]) == 3 and not any(run.get("error") for run in payload["runs"])
    assert (tmp_path / "runs" / "mnist" / "table_dcgmm2" / "samples.png").exists()
    assert (results_md.stat().st_mtime_ns if results_md.exists() else None) == before  # results/ untouched


def test_unknown_preset_is_a_one_line_error():
    result = subprocess.run([sys.executable, str(SCRIPT), "--preset", "nope"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown preset 'nope'" in lines[0] and "tiny" in lines[0] and "small" in lines[0]
    assert "Traceback" not in result.stderr


def test_tiny_preset_refuses_to_write_into_results(results_table, capsys):
    assert results_table.main(["--preset", "tiny", "--out", str(ROOT / "results")]) == 2
    assert "never writes to results/" in capsys.readouterr().err


def test_small_plan_matches_k_and_parameter_counts(results_table, tmp_path):
    """The rows of the small preset without training: flat GMMs get the DCGMM's top-layer K, or the
    perfect-square K whose parameter count is nearest the DCGMM's; every run is planned once."""
    preset = results_table.load_preset("small")
    planner = results_table.Planner(preset, results_table.Composer(tmp_path), [])
    planner.plan(["mnist"])
    runs = planner.runs
    rows = {row.row_id: row for row in planner.rows}
    b_main, b_out = runs[rows["dcgmm2"].main], runs[rows["dcgmm2"].outliers[0]]
    assert (b_main.K, b_out.K) == (36, 49)
    assert b_out.params > b_main.params  # independent mode in the lower layer
    same_k = rows["flat_same_k:dcgmm2"]
    assert runs[same_k.main].K == 36 and runs[same_k.outliers[0]].K == 49
    for topology in ("dcgmm2", "dcgmm3"):
        row = rows[f"flat_same_params:{topology}"]
        for flat_key, dcgmm_key in ((row.main, rows[topology].main), (row.outliers[0], rows[topology].outliers[0])):
            flat, dcgmm = runs[flat_key], runs[dcgmm_key]
            assert math.isqrt(flat.K) ** 2 == flat.K  # the annealing grid needs a perfect square
            assert abs(flat.params - dcgmm.params) / dcgmm.params < 0.1, (flat.name, flat.params, dcgmm.params)
            root = math.isqrt(flat.K)
            per_k = 784 * 2 + 1 + 10  # means, precisions, weight and classifier weights per component
            neighbours = [(root - 1) ** 2, (root + 1) ** 2]
            assert all(abs(flat.params - dcgmm.params) <= abs(per_k * k + 10 - dcgmm.params) for k in neighbours)
    # shared runs are planned once: the K=49 flat outlier run serves the rows of B and E
    assert sum(1 for spec in runs.values() if spec.name == "flat_k49_outliers_held0") == 1
    assert runs[rows["em_same_k:dcgmm3"].main].K == 25 and runs[rows["em_same_k:dcgmm3"].outliers[0]].K == 49
    assert all(spec.experiment is None or spec.overrides[0] == f"experiment={spec.experiment}" for spec in runs.values())

"""scripts/results_table.py: the tiny preset end to end, the Markdown table it writes, the plan of
the small preset (K and parameter matching, without training) and its command-line errors."""

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT, needs_mnist

SCRIPT = ROOT / "scripts" / "results_table.py"


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
    "JS": (0, math.log(2) + 1e-6), "AUROC 0": (0, 1), "Dunn": (0, 10), "DB": (0, 100), "AUROC mean": (0, 1), "σ end": (0, 100), "σ end (outl.)": (0, 100),
}


@needs_mnist
def test_tiny_preset_writes_a_well_formed_table(results_table, tmp_path):
    results_md = ROOT / "results" / "RESULTS.md"
    before = results_md.stat().st_mtime_ns if results_md.exists() else None

    assert results_table.main(["--preset", "tiny", "--out", str(tmp_path)]) == 0

    text = (tmp_path / "RESULTS.md").read_text()
    for words in ("preset `tiny`", "epochs", "data, MNIST", "held out", "machine", "cores", "torch", "date", "wall time of this call", "progress", "seeds"):
        assert words in text, words
    tables = markdown_tables(text)
    assert list(tables) == ["MNIST"]  # the tiny preset runs MNIST only; "Columns"/"Rows" hold no table
    header, separator, *rows = tables["MNIST"]
    assert header[:4] == ["model", "seeds", "K", "params"] and header[-3:] == ["train s", "img/s", "runs"]
    for column in ("AUROC 0", "AUROC mean", "AUROC sum", "AUROC cross", "AUROC noise", "NDB/B", "NDB/B sharp."):
        assert column in header, column
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
        for column in ("purity", "NMI", "ARI", "Dunn", "DB", "NDB/B", "JS", "AUROC 0"):
            assert number(cells[column]) is not None, (row[0], column)  # measured for every row
        assert cells["runs"] == "2/2" and cells["seeds"] == "1/1"
    b, flat, em = (dict(zip(header, row)) for row in rows)
    assert number(b["params"]) > number(flat["params"])  # the flat GMM with the same K is much smaller
    assert em["clf acc"] == "–" and number(b["clf acc"]) is not None
    for column in ("AUROC sum", "AUROC cross", "AUROC noise"):  # the SGD rows' extra outlier scores and sets
        assert number(b[column]) is not None and number(flat[column]) is not None and em[column] == "–"
    assert number(b["NDB/B sharp."]) is not None and flat["NDB/B sharp."] == "–"  # only B's F(8,2) patches overlap
    assert "## Verdict" in text and "B (dcgmm2) against the flat GMM with the same K" in text

    payload = json.loads((tmp_path / "tiny.json").read_text())
    assert payload["preset"] == "tiny" and payload["meta"]["machine"]["torch"]
    assert len(payload["rows"]["mnist"]) == 3 and not any("error" in run for run in payload["runs"])
    assert all(run["finished"] for run in payload["runs"])

    assert (tmp_path / "runs" / "mnist" / "table_dcgmm2_s12345" / "samples.png").exists()
    records = sorted(p.name for p in (tmp_path / "records" / "mnist").glob("*.json"))
    assert len(records) == 6 and "table_dcgmm2_s12345.json" in records  # one record per finished run
    assert (results_md.stat().st_mtime_ns if results_md.exists() else None) == before  # results/ untouched
    # the numbers of the recorded reference (tests/reference), exactly, on the machine that recorded them
    from tests.reference import record

    recorded = json.loads(record.VALUES.read_text())["results/tiny"]
    if recorded["machine"] != record.tiny_preset_machine():
        pytest.skip(f"the table is well formed; its numbers were recorded on {recorded['machine']['cpu']} (torch "
                    f"{recorded['machine']['torch']}), where they must match exactly, not on this CPU")
    assert record.tiny_preset_values(payload) == recorded["runs"]


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
    b_main, b_out = runs[rows["dcgmm2"].main[0]], runs[rows["dcgmm2"].outliers[0][0]]
    assert (b_main.K, b_out.K) == (36, 49)
    assert b_out.params > b_main.params  # independent mode in the lower layer
    same_k = rows["flat_same_k:dcgmm2"]
    assert runs[same_k.main[0]].K == 36 and runs[same_k.outliers[0][0]].K == 49
    for topology in ("dcgmm2", "dcgmm3"):
        row = rows[f"flat_same_params:{topology}"]
        for flat_key, dcgmm_key in ((row.main[0], rows[topology].main[0]), (row.outliers[0][0], rows[topology].outliers[0][0])):
            flat, dcgmm = runs[flat_key], runs[dcgmm_key]
            assert math.isqrt(flat.K) ** 2 == flat.K  # the annealing grid needs a perfect square
            assert abs(flat.params - dcgmm.params) / dcgmm.params < 0.1, (flat.name, flat.params, dcgmm.params)
            root = math.isqrt(flat.K)
            per_k = 784 * 2 + 1 + 10  # means, precisions, weight and classifier weights per component
            neighbours = [(root - 1) ** 2, (root + 1) ** 2]
            assert all(abs(flat.params - dcgmm.params) <= abs(per_k * k + 10 - dcgmm.params) for k in neighbours)
    # shared runs are planned once: the K=49 flat outlier run serves the rows of B and E
    assert sum(1 for spec in runs.values() if spec.name == "flat_k49_outliers_held0_s12345") == 1
    assert runs[rows["em_same_k:dcgmm3"].main[0]].K == 25 and runs[rows["em_same_k:dcgmm3"].outliers[0][0]].K == 49
    assert all(spec.experiment is None or spec.overrides[0] == f"experiment={spec.experiment}" for spec in runs.values())


# ------------------------------------------------------------------------- records, resume, verdict
def fake_record(results_table, spec, preset, **metrics) -> dict:
    """A finished run record as run_sgd / run_em write it, with the given numbers."""
    record = dict(record_version=results_table.RECORD_VERSION, preset="tiny", key=results_table.run_key(spec, preset),
                  dataset=spec.dataset, name=spec.name, seed=spec.seed, machine="test CPU", seconds=1.0, K=spec.K, params=spec.params)
    nmi, ndb, auroc = metrics["nmi"], metrics["ndb"], metrics["auroc"]
    if spec.method == "em":
        record.update(cluster=dict(nmi=nmi, purity=0.5, ari=0.2), auroc=auroc if spec.kind == "outliers" else None, images_per_second=1.0)
    else:
        m = {"test/cluster/nmi": nmi, "test/cluster/purity": 0.5, "test/acc": 0.5} if spec.kind == "main" else {"test/auroc": auroc, "test/auroc/sum": auroc}
        record.update(metrics=m, speed=dict(fit_seconds=1.0, images_per_second=100.0, train_images=100), top_sigma=0.01)
    if spec.kind == "main":
        record["ndb"] = dict(ndb_ratio=ndb, js=0.1)
    return record


@pytest.fixture
def tiny_plan(results_table, tmp_path):
    preset = results_table.load_preset("tiny")
    planner = results_table.Planner(preset, results_table.Composer(tmp_path / "runs"), [])
    planner.plan(["mnist"])
    return preset, planner


def write_records(results_table, preset, planner, records_dir, numbers):
    for spec in planner.runs.values():
        row = "dcgmm" if spec.name.startswith("table_") else "em" if spec.method == "em" else "flat"
        path = results_table.record_path(records_dir, spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fake_record(results_table, spec, preset, **numbers[row])))


def test_report_from_records_states_where_dcgmm_loses(results_table, tiny_plan, tmp_path):
    """--report-only writes the table and the verdict from run records alone: here the DCGMM
    clusters worse (NMI 0.40 vs 0.55), samples better (NDB/B 0.30 vs 0.60) and detects outliers
    as well as the flat GMM (AUROC 0.901 vs 0.900, inside the 0.005 floor)."""
    preset, planner = tiny_plan
    numbers = {"dcgmm": dict(nmi=0.40, ndb=0.30, auroc=0.901), "flat": dict(nmi=0.55, ndb=0.60, auroc=0.900), "em": dict(nmi=0.5, ndb=0.5, auroc=0.9)}
    write_records(results_table, preset, planner, tmp_path / "records", numbers)
    assert results_table.main(["--preset", "tiny", "--out", str(tmp_path), "--report-only"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    verdict = text[text.index("## Verdict"):text.index("## Columns")]
    assert "**Clustering** (NMI): DCGMM worse than the flat GMM in every comparison: the claim does not hold here" in verdict
    assert "**Sampling** (NDB/B): DCGMM better than the flat GMM in every comparison" in verdict
    assert "**Outlier detection** (AUROC): DCGMM and the flat GMM equal within the noise" in verdict
    assert "clustering **worse** (NMI 0.400 vs 0.550, difference -0.150" in verdict
    assert "6 of 6 runs finished" in text and "test CPU" in text
    assert not (tmp_path / "runs" / "mnist").exists()  # nothing was trained


def test_verdict_margin_uses_the_spread_over_seeds():
    from dcgmm.results.verdict import CLAIMS, compare

    nmi = CLAIMS[0]
    dcgmm = dict(nmi=0.60, nmi_sd=0.03, seeds=2)
    assert compare(dcgmm, dict(nmi=0.55, nmi_sd=0.01, seeds=2), nmi).verdict == "equal"  # 0.05 < 2 * sqrt(0.03^2 + 0.01^2)
    assert compare(dcgmm, dict(nmi=0.50, nmi_sd=0.01, seeds=2), nmi).verdict == "better"
    assert compare(dict(nmi=0.60, seeds=1), dict(nmi=0.605, seeds=1), nmi).verdict == "equal"  # inside the 0.01 floor
    assert compare(dict(nmi=None), dict(nmi=0.5), nmi).verdict == "not measured"
    ndb = CLAIMS[1]  # lower is better
    assert compare(dict(ndb_ratio=0.2, seeds=1), dict(ndb_ratio=0.6, seeds=1), ndb).verdict == "better"


@pytest.mark.parametrize(
    "change, fragment",
    [
        (dict(record_version=1), "written by another code version (record version 1"),
        (dict(preset="full"), "a record of preset 'full', not 'tiny'"),
        (dict(key="0123456789abcdef"), "made with other settings"),
    ],
)
def test_resume_refuses_a_foreign_record_naming_the_file(results_table, tiny_plan, tmp_path, capsys, change, fragment):
    preset, planner = tiny_plan
    numbers = {row: dict(nmi=0.5, ndb=0.5, auroc=0.9) for row in ("dcgmm", "flat", "em")}
    write_records(results_table, preset, planner, tmp_path / "records", numbers)
    target = tmp_path / "records" / "mnist" / "flat_k36_s12345.json"
    target.write_text(json.dumps({**json.loads(target.read_text()), **change}))
    before = {p: p.read_bytes() for p in (tmp_path / "records").rglob("*.json")}
    assert results_table.main(["--preset", "tiny", "--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0] and fragment in err[0], err
    assert {p: p.read_bytes() for p in (tmp_path / "records").rglob("*.json")} == before  # nothing touched
    assert not (tmp_path / "RESULTS.md").exists()


def test_existing_records_need_resume(results_table, tiny_plan, tmp_path, capsys):
    preset, planner = tiny_plan
    write_records(results_table, preset, planner, tmp_path / "records", {row: dict(nmi=0.5, ndb=0.5, auroc=0.9) for row in ("dcgmm", "flat", "em")})
    assert results_table.main(["--preset", "tiny", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds 6 run record(s)" in err[0] and "--resume" in err[0]


def test_failed_records_are_reported_and_placement_overrides_keep_the_keys(results_table, tiny_plan, tmp_path):
    """A failed run's record is listed under "Failed runs" (its key is not checked: it is trained
    again), and overrides that only say where a run trains (trainer=gpu, data.on_device=true) keep
    the records' keys, so a CPU-made table continues on a GPU machine."""
    preset, planner = tiny_plan
    numbers = {row: dict(nmi=0.5, ndb=0.5, auroc=0.9) for row in ("dcgmm", "flat", "em")}
    write_records(results_table, preset, planner, tmp_path / "records", numbers)
    target = tmp_path / "records" / "mnist" / "flat_k36_s12345.json"
    target.write_text(json.dumps(dict(error="RuntimeError: out of memory", key="stale", record_version=results_table.RECORD_VERSION, preset="tiny")))
    assert results_table.main(["--preset", "tiny", "--out", str(tmp_path), "--report-only"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Failed runs" in text and "mnist/flat_k36_s12345: RuntimeError: out of memory" in text
    payload = json.loads((tmp_path / "tiny.json").read_text())
    assert [r["error"] for r in payload["runs"] if r["name"] == "flat_k36_s12345"] == ["RuntimeError: out of memory"]

    on_gpu = results_table.Planner(preset, results_table.Composer(tmp_path / "runs"), ["trainer=gpu", "data.on_device=true", "trainer.devices=2"])
    on_gpu.plan(["mnist"])
    for key, spec in planner.runs.items():
        assert results_table.run_key(on_gpu.runs[key], preset) == results_table.run_key(spec, preset)
    other = results_table.Planner(preset, results_table.Composer(tmp_path / "runs"), ["trainer.max_epochs=3"])
    other.plan(["mnist"])
    spec = next(s for s in planner.runs.values() if s.method == "sgd")
    assert results_table.run_key(other.runs[spec.key], preset) != results_table.run_key(spec, preset)  # what it computes

"""The results pipeline (dcgmm.results, ``python results.py``): the tiny preset end to end through
Hydra's joblib and submitit launchers, relaunches that skip finished runs, evaluation-only passes
over the kept models, the table aggregated from records (the committed protocol's table
regenerated), the plan of the small preset, and the one-line refusals of bad input."""

import json
import math
import multiprocessing
import shutil
import statistics
import subprocess
import sys

import pytest

from dcgmm.errors import ConfigError
from dcgmm.results import launch
from dcgmm.results.jobs import record_path
from dcgmm.results.plan import Planner, load_preset, run_key
from dcgmm.results.records import RECORD_VERSION, code_version, write_json
from tests.conftest import ROOT, needs_mnist

# conf/hydra/launcher/joblib.yaml shares its name with the plugin's config on purpose (dcgmm.app.utils
# filters Hydra's warning about it for the command line; pytest resets warning filters per test)
pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/joblib' is validated against ConfigStore schema:UserWarning")


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
    "JS": (0, math.log(2) + 1e-6), "AUROC 0": (0, 1), "Dunn": (0, 10), "DB": (0, 100), "σ end": (0, 100), "σ end (outl.)": (0, 100),
}


def check_tiny_table(tmp_path):
    text = (tmp_path / "RESULTS.md").read_text()
    for words in ("preset `tiny`", "epochs", "data, MNIST", "held out", "machine", "cores", "torch", "date", "wall time of this call", "progress", "seeds"):
        assert words in text, words
    tables = markdown_tables(text)
    assert list(tables) == ["MNIST"]  # the tiny preset runs MNIST only; "Columns"/"Rows" hold no table
    header, separator, *rows = tables["MNIST"]
    assert header[:4] == ["model", "seeds", "K", "params"] and header[-3:] == ["train s", "img/s", "runs"]
    for column in ("AUROC 0", "AUROC classes", "AUROC cross", "AUROC noise", "NDB/B", "NDB/B sharp."):
        assert column in header, column
    assert all(set(cell) <= set("-:") and cell for cell in separator) and len(separator) == len(header)
    assert [row[0] for row in rows] == ["B (dcgmm2)", "A flat, K as B", "EM (sklearn), K as B"]
    for row in rows:
        assert len(row) == len(header), row
        cells = dict(zip(header, row))
        assert number(cells["K"]) == 36 and number(cells["K (outl.)"]) == 25  # topology B: top K 36; outliers (indymode): 25
        assert number(cells["params"]) > 0 and number(cells["train s"]) >= 0 and number(cells["img/s"]) > 0
        for column, (low, high) in RANGES.items():
            value = number(cells[column])
            assert value is None or low <= value <= high, (row[0], column, value)
        for column in ("purity", "NMI", "ARI", "Dunn", "DB", "NDB/B", "JS", "AUROC 0"):
            assert number(cells[column]) is not None, (row[0], column)  # measured for every row
        assert cells["runs"] == "2/2" and cells["seeds"] == "1/1"
        assert cells["AUROC classes"] == f"{cells['AUROC 0']} (1 class)"  # one held-out class: its AUROC
    b, flat, em = (dict(zip(header, row)) for row in rows)
    assert number(b["params"]) > number(flat["params"])  # the flat GMM with the same K is much smaller
    assert em["clf acc"] == "–" and number(b["clf acc"]) is not None
    assert "AUROC sum" not in header  # the top layer's objective outweighs the others by orders of magnitude: in the JSON only
    for column in ("AUROC cross", "AUROC noise"):  # the SGD rows' extra outlier sets
        assert number(b[column]) is not None and number(flat[column]) is not None and em[column] == "–"
    assert number(b["NDB/B sharp."]) is not None and flat["NDB/B sharp."] == "–"  # only B's F(8,2) patches overlap
    assert "## Verdict" in text and "B (dcgmm2) against the flat GMM with the same K" in text



def check_samples_pass(tmp_path, records):
    """mode=samples: every kept main model's samples (EM's fitted mixture too) under the table's own
    sampler (which gives the record's NDB again) and the authors' sampler of its row (conf/sampler,
    named in the preset; EM takes the flat GMMs'), a grid of each, and a table of both in
    RESULTS.md; outlier runs are left alone."""
    import torch

    from dcgmm.app.checkpoints import load_module
    from dcgmm.app.config import compose
    from dcgmm.app.ndb import training_bins
    from dcgmm.app.utils import instantiate
    from dcgmm.core.sampling import Sampler, SamplingOptions

    before = {name: json.loads((tmp_path / "records" / "mnist" / f"{name}.json").read_text()) for name in records}
    assert launch.main(["preset=tiny", f"out={tmp_path}", "mode=samples"]) == 0
    expected = {"table_dcgmm2_s12345": ("authors_B", dict(top="uniform", top_s=3, divisor=20.0)), "flat_k36_s12345": ("authors_flat", dict(top="uniform", divisor=10.0))}
    _, preset = load_preset("tiny")
    data = compose("train", Planner(preset).sgd_overrides("table_flat", "mnist", "main", [])).data
    datamodule = instantiate(data)
    datamodule.setup("fit")
    ndb = preset["ndb"]
    bins = training_bins(datamodule, bins=ndb["bins"], kmeans_samples=ndb["kmeans_samples"], train_images=ndb["train_images"])  # not cached
    for name in records:
        after = json.loads((tmp_path / "records" / "mnist" / f"{name}.json").read_text())
        if name == "em_k36":  # the kept mixture: the record's own draw again, and the flat GMMs' authors' sampler
            figures = after.pop("samplers")
            assert after == before[name] and before[name]["checkpoint"] == "mnist/em_k36/em.npz"
            assert figures["learned"]["matches_record"] and figures["authors"]["file"] == "authors_flat"
            continue
        if name not in expected:  # outlier runs: untouched
            assert after == before[name], name
            continue
        figures = after.pop("samplers")
        assert after == before[name]
        assert figures["learned"]["matches_record"] and figures["learned"]["ndb"] == before[name]["ndb"]["ndb"]
        file, options = expected[name]
        assert figures["authors"]["file"] == file
        module = load_module(tmp_path / "runs" / before[name]["checkpoint"])
        drawn = Sampler(module.stack, SamplingOptions(**options), torch.Generator().manual_seed(0)).sample(ndb["samples"])
        mine = bins.evaluate(drawn)
        assert (figures["authors"]["ndb"], figures["authors"]["js"]) == (mine.ndb, pytest.approx(mine.js, abs=1e-12)), name
        for sampler in ("learned", "authors"):
            assert (tmp_path / "samples" / "mnist" / f"{name}_{sampler}.png").stat().st_size > 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "### MNIST: samples under two samplers" in text and "`authors_B`" in text and "`authors_flat`" in text
    assert "| EM (sklearn), K as B | 1/1 |" in text
    assert "[authors](samples/mnist/table_dcgmm2_s12345_authors.png)" in text  # the grid, relative to RESULTS.md
    assert "sampling, the authors' sampler **" in text  # a verdict word, not "not measured"

    # a relaunch measures nothing again: every model has figures of the samplers as they are
    stamps = {p: p.read_bytes() for p in (tmp_path / "records").rglob("*.json")}
    assert launch.main(["preset=tiny", f"out={tmp_path}", "mode=samples"]) == 0
    assert {p: p.read_bytes() for p in (tmp_path / "records").rglob("*.json")} == stamps

    # figures of other sampler settings are measured again; a job that fails (an unreadable model)
    # writes its error beside the earlier figures; the launch lists it and exits with status 1, the
    # table is not written again and shows none for it
    path = tmp_path / "records" / "mnist" / "flat_k36_s12345.json"
    changed = json.loads(path.read_text())
    changed["samplers"]["authors"]["options"]["divisor"] = 5.0
    write_json(path, changed)
    checkpoint = tmp_path / "runs" / before["flat_k36_s12345"]["checkpoint"]
    checkpoint.write_bytes(b"not a checkpoint")
    stamp = (tmp_path / "RESULTS.md").stat().st_mtime_ns
    assert launch.main(["preset=tiny", f"out={tmp_path}", "mode=samples"]) == 1
    failed = json.loads((tmp_path / "records" / "mnist" / "flat_k36_s12345.json").read_text())["samplers"]
    assert failed["error"].startswith("ConfigError") and failed["authors"]["file"] == "authors_flat"
    assert (tmp_path / "RESULTS.md").stat().st_mtime_ns == stamp
    from dcgmm.results.report import run_values

    assert run_values(json.loads((tmp_path / "records" / "mnist" / "flat_k36_s12345.json").read_text()), "sgd")["ndb_authors"] is None


@needs_mnist
def test_tiny_preset_through_joblib_relaunch_and_evaluation_pass(tmp_path):
    """The tiny preset as a multirun of two joblib jobs: a well-formed table, a record and a kept
    checkpoint per run, the numbers of the recorded reference; a relaunch trains nothing; an
    evaluation-only pass tests every kept model again and finds the record's own numbers."""
    results_md = ROOT / "results" / "RESULTS.md"
    before = results_md.stat().st_mtime_ns if results_md.exists() else None

    assert launch.main(["preset=tiny", f"out={tmp_path}", "hydra.launcher.n_jobs=2"]) == 0
    check_tiny_table(tmp_path)
    payload = json.loads((tmp_path / "tiny.json").read_text())
    assert payload["preset"] == "tiny" and payload["meta"]["machine"]["torch"]
    assert len(payload["rows"]["mnist"]) == 3 and all(run["finished"] and "error" not in run for run in payload["runs"])
    runs = tmp_path / "runs" / "mnist"
    assert (runs / "table_dcgmm2_s12345" / "samples.png").exists() and (runs / "table_dcgmm2_s12345" / ".hydra" / "overrides.yaml").exists()
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "records" / "mnist").glob("*.json")}
    assert len(records) == 6 and {r["code"] for r in records.values()} == {code_version()}  # the code of the launch
    for name, record in records.items():  # every SGD run keeps the checkpoint its test scored, EM on all classes its mixture
        if not name.startswith("em_") or name == "em_k36":
            assert (tmp_path / "runs" / record["checkpoint"]).is_file() and record["checkpoint"].startswith(f"mnist/{name}/")
        else:
            assert "checkpoint" not in record
    assert (results_md.stat().st_mtime_ns if results_md.exists() else None) == before  # results/ untouched

    # relaunch: every run has its finished, matching record; nothing is trained or rewritten
    stamps = {p: p.read_bytes() for p in (tmp_path / "records").rglob("*.json")}
    assert launch.main(["preset=tiny", f"out={tmp_path}"]) == 0
    assert {p: p.read_bytes() for p in (tmp_path / "records").rglob("*.json")} == stamps

    # evaluation-only passes over the kept models (the preset's test settings apply again): the
    # same models on the same test images give the records' own numbers; outlier runs scored by
    # the summed layers give the records' AUROC sum; EM has no checkpoint to test and is left alone
    assert launch.main(["preset=tiny", f"out={tmp_path}", "mode=evaluate", "label=again"]) == 0
    assert launch.main(["preset=tiny", f"out={tmp_path}", "mode=evaluate", "label=sum", "kind=outliers", "outlier.score=sum"]) == 0
    for name, record in records.items():
        again = json.loads((tmp_path / "records" / "mnist" / f"{name}.json").read_text())
        if name.startswith("em_"):
            assert again == record
            continue
        figures, own = again["evaluations"]["again"], record["metrics"]
        assert figures["overrides"] == []
        same = ("test/cluster/nmi", "test/acc", "test/loss") if "test/cluster/nmi" in own else ("test/loss", "test/auroc")
        for key in same:
            assert figures["metrics"][key] == pytest.approx(own[key], rel=1e-6, abs=1e-6), (name, key)
        if "outliers" in name:
            assert again["evaluations"]["sum"]["metrics"]["test/auroc"] == pytest.approx(own["test/auroc/sum"], abs=1e-6)
            assert again["evaluations"]["sum"]["overrides"] == ["outlier.score=sum"]
        else:
            assert "sum" not in again["evaluations"]  # kind=outliers
        assert {k: v for k, v in again.items() if k != "evaluations"} == record  # the record's own numbers stay

    check_samples_pass(tmp_path, records)

    # the numbers of the recorded reference (tests/reference), exactly, on the machine that recorded them
    from tests.reference import record

    recorded = json.loads(record.VALUES.read_text())["results/tiny"]
    if recorded["machine"] != record.tiny_preset_machine():
        pytest.skip(f"the table is well formed; its numbers were recorded on {recorded['machine']['cpu']} (torch "
                    f"{recorded['machine']['torch']}), where they must match exactly, not on this CPU")
    assert record.tiny_preset_values(payload) == recorded["runs"]


@needs_mnist
def test_submitit_local_launcher_runs_two_jobs_of_the_tiny_preset(tmp_path):
    """hydra/launcher=submitit_local (submitit's local executor, the path of SLURM jobs): the tiny
    preset's two EM runs as two submitit jobs, each writing its record; the other rows stay empty."""
    assert launch.main(["preset=tiny", f"out={tmp_path}", "methods=em", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]) == 0
    records = sorted(p.name for p in (tmp_path / "records" / "mnist").glob("*.json"))
    assert records == ["em_k25_held0.json", "em_k36.json"]
    assert all("error" not in json.loads((tmp_path / "records" / "mnist" / r).read_text()) for r in records)
    assert len(list((tmp_path / "runs" / ".submitit").rglob("*_result.pkl"))) == 2  # two submitit jobs, each with its result
    assert "2 of 6 runs finished" in (tmp_path / "RESULTS.md").read_text()


def test_slurm_launcher_sizes_jobs_by_the_trainer():
    """hydra/launcher=slurm composes with tasks_per_node = trainer.devices and nodes = trainer.num_nodes."""
    from omegaconf import OmegaConf

    from dcgmm.app.config import compose

    base = ["plan=p.json", "run=mnist/x", "hydra/launcher=slurm"]
    cfg = compose("results_job", [*base, "trainer=ddp", "trainer.devices=2", "trainer.num_nodes=3"])
    assert OmegaConf.select(cfg, "hydra.launcher.tasks_per_node") == 2 and OmegaConf.select(cfg, "hydra.launcher.nodes") == 3
    assert OmegaConf.select(cfg, "hydra.launcher._target_").endswith("SlurmLauncher")
    cfg = compose("results_job", base)  # one device on one node
    assert (OmegaConf.select(cfg, "hydra.launcher.tasks_per_node"), OmegaConf.select(cfg, "hydra.launcher.nodes")) == (1, 1)
    train = compose("train", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"])  # train.py -m uses the same file
    assert OmegaConf.select(train, "hydra.launcher.tasks_per_node") == 4


def test_launcher_without_its_package_is_one_line(tmp_path, monkeypatch, capsys):
    """hydra/launcher=slurm without submitit: one line naming the package, before anything is planned."""
    monkeypatch.setattr(launch, "_installed", lambda module: module != "submitit")
    monkeypatch.setattr(Planner, "plan", lambda *a: pytest.fail("planned before the launcher was checked"))
    assert launch.main(["preset=tiny", f"out={tmp_path}", "hydra/launcher=slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: hydra/launcher=slurm needs the package submitit, which is not installed: pip install submitit"]
    assert not tmp_path.joinpath("records").exists()


def test_small_plan_matches_k_and_parameter_counts():
    """The rows of the small preset without training: flat GMMs get the DCGMM's top-layer K, or the
    perfect-square K whose parameter count is nearest the DCGMM's; every run is planned once."""
    _, preset = load_preset("small")
    planner = Planner(preset).plan(["mnist"])
    runs = planner.runs
    rows = {row.row_id: row for row in planner.rows}
    b_main, b_out = runs[rows["dcgmm2"].main[0]], runs[rows["dcgmm2"].outliers[0][0]]
    assert (b_main.K, b_out.K) == (36, 25)  # outliers: the authors' outliers-B-indymode settings, K 25/25
    assert b_out.params > b_main.params  # independent mode in the lower layer
    same_k = rows["flat_same_k:dcgmm2"]
    assert runs[same_k.main[0]].K == 36 and runs[same_k.outliers[0][0]].K == 25
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
    assert runs[rows["em_same_k:dcgmm3"].main[0]].K == 25 and runs[rows["em_same_k:dcgmm3"].outliers[0][0]].K == 49
    assert all(spec.experiment is None or spec.overrides[0] == f"experiment={spec.experiment}" for spec in runs.values())
    assert Planner.from_dict(preset, json.loads(json.dumps(planner.as_dict()))).as_dict() == planner.as_dict()  # the plan file's round trip


def test_every_class_rows_hold_out_each_class_with_the_first_seed():
    """The full preset: B and C, their flat GMMs with the same K and EM hold out each of the 10
    classes (class 0 with both MNIST seeds, the others with the first); E, the flat GMMs with as
    many parameters and the circuit hold out class 0 only. B's outlier runs are the authors'
    outliers-B-indymode settings (K 25/25)."""
    _, preset = load_preset("full")
    planner = Planner(preset).plan(["mnist"])
    rows, runs = {row.row_id: row for row in planner.rows}, planner.runs
    every = [0, *range(1, 10)]
    for row_id in ("dcgmm2", "dcgmm2_pool", "flat_same_k:dcgmm2", "flat_same_k:dcgmm2_pool", "em_same_k:dcgmm2", "em_same_k:dcgmm2_pool"):
        assert sorted(rows[row_id].outliers) == every, row_id
        seeds = {c: [runs[k].seed for k in keys] for c, keys in rows[row_id].outliers.items()}
        first = [None] if row_id.startswith("em") else [12345]
        assert seeds[0] == ([None] if row_id.startswith("em") else [12345, 23456]) and all(seeds[c] == first for c in range(1, 10)), row_id
    for row_id in ("dcgmm3", "flat_same_params:dcgmm2", "flat_same_params:dcgmm3", "em_same_k:dcgmm3", "circuit"):
        assert sorted(rows[row_id].outliers) == [0], row_id
    # a run shared by rows is planned once: the K=49 flat outlier run of class 0 serves C's row and E's
    shared = "mnist/flat_k49_outliers_held0_s12345"
    assert shared in rows["flat_same_k:dcgmm2_pool"].outliers[0] and shared in rows["flat_same_k:dcgmm3"].outliers[0]
    b = runs[rows["dcgmm2"].outliers[3][0]]
    assert (b.K, b.held_out, b.seed) == (25, 3, 12345) and "outlier.held_out=3" in b.overrides
    assert runs[rows["flat_same_k:dcgmm2"].outliers[3][0]].K == 25
    model = planner.compose(b.overrides).model
    assert [layer.get("K") for layer in model.layers if layer.kind == "gmm"] == [25, 25] and model.layers[1].lambda_pi == 0.0
    assert model.layers[1].mode == "independent" and model.layers[3].wait == 0.2 and planner.compose(b.overrides).trainer.max_epochs == 30


def test_launch_takes_the_outlier_runs_of_chosen_classes(capsys):
    """classes=<c> narrows a launch to the outlier runs of those held-out classes (the runs on all
    classes stay unless kind=outliers); a class outside 0-9 is one line, exit status 2."""
    assert launch.main(["preset=full", "datasets=mnist", "methods=[sgd,em]", "kind=outliers", "classes=[3,4]", "mode=plan", "out=/nonexistent/x"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  mnist/")]
    assert listed and all(name.endswith(("held3_s12345", "held4_s12345", "held3", "held4")) for name in listed)
    assert len(listed) == 2 * 6  # B, C, their same-K flat GMMs and EM, for two classes
    assert launch.main(["preset=full", "classes=10", "mode=plan"]) == 2
    assert "classes=10: give held-out classes from 0 to 9" in capsys.readouterr().err


def test_an_every_class_topology_must_be_one_of_the_preset(tmp_path):
    preset = (ROOT / "src" / "dcgmm" / "conf" / "results" / "tiny.yaml").read_text() + "every_class: [dcgmm3]\n"
    (tmp_path / "odd.yaml").write_text(preset)
    with pytest.raises(ConfigError, match=r"every_class \['dcgmm3'\] names no dcgmm of the preset"):
        load_preset(str(tmp_path / "odd.yaml"))


@pytest.mark.parametrize(("samplers", "message"), [
    ("{authors: {dcgmm3: authors_E}}", r"samplers.authors names the row 'dcgmm3'; use any of \['dcgmm2', 'flat'\]"),
    ("{authors: {dcgmm2: {mnist: authors_Z}}}", r"samplers.authors.dcgmm2: no sampler file 'authors_Z' in conf/sampler; use any of authors_B, "),
    ("{authors: {dcgmm2: {mnsit: authors_B}}}", r"samplers.authors.dcgmm2 names the dataset\(s\) \['mnsit'\]; the preset's: \['mnist'\]"),
    ("{authors: authors_B}", r"samplers.authors must map rows to sampler files, e.g. samplers: \{authors: \{dcgmm2: authors_B\}\}"),
])
def test_a_preset_sampler_must_name_a_row_and_a_file(tmp_path, samplers, message):
    text = (ROOT / "src" / "dcgmm" / "conf" / "results" / "tiny.yaml").read_text()
    (tmp_path / "odd.yaml").write_text(text[: text.index("samplers:")] + f"samplers: {samplers}\n")
    with pytest.raises(ConfigError, match=message):
        load_preset(str(tmp_path / "odd.yaml"))


def test_report_shows_the_auroc_of_every_held_out_class(tmp_path):
    """A preset whose DCGMM holds out every class: the report's per-class table gives each class's
    AUROC from its record, and the mean and spread over the classes."""
    text = (ROOT / "src" / "dcgmm" / "conf" / "results" / "tiny.yaml").read_text() + "every_class: [dcgmm2]\n"
    text = text.replace("compare: [flat_same_k, em_same_k]", "compare: [flat_same_k, flat_same_params, em_same_k]")
    assert "flat_same_params" in text
    (tmp_path / "every.yaml").write_text(text)
    _, preset = load_preset(str(tmp_path / "every.yaml"))
    planner = Planner(preset).plan(["mnist"])
    for spec in planner.runs.values():
        auroc = 0.5 + 0.04 * (spec.held_out or 0) + (0.01 if spec.name.startswith("table_") else 0.0)
        record = fake_record(spec, preset, nmi=0.5, ndb=0.5, auroc=auroc)
        write_json(record_path(tmp_path / "records", spec), {**record, "preset": "every"})
    assert launch.main([f"preset={tmp_path / 'every.yaml'}", f"out={tmp_path}", "mode=report"]) == 0
    tables = markdown_tables((tmp_path / "RESULTS.md").read_text())
    per_class = [t for title, t in tables.items() if "per held-out class" in title]
    assert not per_class  # the table sits under the dataset's section (### heading)
    table = tables["MNIST"]
    start = next(i for i, row in enumerate(table) if row[0] == "model" and row[1] == "0")
    header, rows = table[start], table[start + 2:]
    assert header == ["model", *map(str, range(10)), "mean ± sd over classes"]
    b = next(row for row in rows if row[0] == "B (dcgmm2)")
    values = [0.51 + 0.04 * c for c in range(10)]
    assert [float(cell) for cell in b[1:11]] == pytest.approx(values, abs=5e-4)
    assert b[11] == f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (10 classes)"
    same_params = [row for row in rows if row[0].startswith("A flat, params")]
    assert len(same_params) == 1 and float(same_params[0][1]) == pytest.approx(0.5)
    assert all(cell == "–" for cell in same_params[0][2:11])  # as many parameters: class 0 only


def test_committed_protocol_table_regenerates_from_its_records(tmp_path, capsys):
    """The committed records of the full preset, aggregated again: the same rows and runs as the
    committed results/full.json, and every record is one of the planned runs (a relaunch trains
    only the runs without one)."""
    shutil.copytree(ROOT / "results" / "runs" / "full", tmp_path / "records")
    records = len(list((tmp_path / "records").rglob("*.json")))
    assert launch.main(["preset=full", f"out={tmp_path}", "mode=plan"]) == 0
    assert capsys.readouterr().out.count(" finished\n") == records and not (tmp_path / "RESULTS.md").exists()  # every record is a planned run
    assert launch.main(["preset=full", f"out={tmp_path}", "mode=report"]) == 0
    new, committed = (json.loads(p.read_text()) for p in (tmp_path / "full.json", ROOT / "results" / "full.json"))
    assert new["rows"] == committed["rows"] and new["runs"] == committed["runs"] and new["meta"]["finished"] == records
    assert new["meta"]["planned"] == committed["meta"]["planned"]
    def stable(text):  # RESULTS.md without the lines naming when, where and how it was written
        return [line for line in text.splitlines() if not line.startswith(("Written by", "- **machine**", "- **progress**", "- **date**", "What each column"))]

    assert stable((tmp_path / "RESULTS.md").read_text()) == stable((ROOT / "results" / "RESULTS.md").read_text())
    # a launch over one dataset still writes the whole table (every dataset of the preset)
    assert launch.main(["preset=full", f"out={tmp_path}", "mode=report", "datasets=fashion"]) == 0
    assert stable((tmp_path / "RESULTS.md").read_text()) == stable((ROOT / "results" / "RESULTS.md").read_text())


# ------------------------------------------------------------------------- records, relaunch, verdict
def fake_record(spec, preset, **metrics) -> dict:
    """A finished run record as the jobs write it, with the given numbers."""
    record = dict(record_version=RECORD_VERSION, preset="tiny", key=run_key(spec, preset),
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


@pytest.fixture(scope="module")
def tiny_plan():
    _, preset = load_preset("tiny")
    return preset, Planner(preset).plan(["mnist"])


def write_records(preset, planner, records_dir, numbers):
    for spec in planner.runs.values():
        row = "dcgmm" if spec.name.startswith("table_") else "em" if spec.method == "em" else "flat"
        write_json(record_path(records_dir, spec), fake_record(spec, preset, **numbers[row]))


def test_report_from_records_states_where_dcgmm_loses(tiny_plan, tmp_path):
    """mode=report writes the table and the verdict from run records alone: here the DCGMM
    clusters worse (NMI 0.40 vs 0.55), samples better (NDB/B 0.30 vs 0.60) and detects outliers
    as well as the flat GMM (AUROC 0.901 vs 0.900, inside the 0.005 floor)."""
    preset, planner = tiny_plan
    numbers = {"dcgmm": dict(nmi=0.40, ndb=0.30, auroc=0.901), "flat": dict(nmi=0.55, ndb=0.60, auroc=0.900), "em": dict(nmi=0.5, ndb=0.5, auroc=0.9)}
    write_records(preset, planner, tmp_path / "records", numbers)
    assert launch.main(["preset=tiny", f"out={tmp_path}", "mode=report"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    verdict = text[text.index("## Verdict"):text.index("## Columns")]
    assert "**Clustering** (NMI): DCGMM worse than the flat GMM and EM with the same K in every comparison: the claim does not hold here" in verdict
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


def test_clustering_counts_only_models_with_the_same_k():
    """NMI moves with the number of clusters: the flat GMM with as many parameters (another K) is
    not counted for clustering, EM with the same K is; sampling and outliers count both flat GMMs
    and not EM."""
    from dcgmm.results.verdict import verdict_markdown

    def row(row_id, method, nmi, ndb, auroc):
        return dict(row_id=row_id, label=row_id, method=method, nmi=nmi, ndb_ratio=ndb, auroc={0: auroc}, seeds=1)

    rows = [row("dcgmm2", "sgd", 0.50, 0.50, 0.90), row("flat_same_k:dcgmm2", "sgd", 0.60, 0.60, 0.80),
            row("flat_same_params:dcgmm2", "sgd", 0.30, 0.20, 0.95), row("em_same_k:dcgmm2", "em", 0.55, 0.90, 0.50)]
    text = "\n".join(verdict_markdown("MNIST", rows))
    assert "**Clustering** (NMI): DCGMM worse than the flat GMM and EM with the same K in every comparison: the claim does not hold here (0 better, 0 equal, 2 worse of 2 measured)" in text
    assert "**Sampling** (NDB/B): mixed (1 better, 0 equal, 1 worse of 2 measured)" in text
    assert "**Outlier detection** (AUROC): mixed (1 better, 0 equal, 1 worse of 2 measured)" in text
    assert "dcgmm2 against the flat GMM with as many parameters (flat_same_params:dcgmm2): clustering: not counted (another number of clusters); sampling **worse**" in text
    assert "dcgmm2 against EM with the same K (em_same_k:dcgmm2): clustering **worse** (NMI 0.500 vs 0.550, difference -0.050, margin 0.010; seeds 1 and 1)." in text


def test_single_seed_rows_borrow_the_pooled_seed_spread():
    """A row with one seed takes the spread pooled over the rows with two (sqrt of the mean of
    their variances): a difference of 0.08 NDB/B beats the 0.05 floor, but not twice the borrowed noise."""
    from dcgmm.results.verdict import CLAIMS, compare, pooled_spread

    two_seeds = [dict(ndb_ratio=0.5, ndb_ratio_sd=0.03), dict(ndb_ratio=0.6, ndb_ratio_sd=0.05), dict(ndb_ratio=0.7, ndb_ratio_sd=None)]
    pooled = pooled_spread(two_seeds)
    assert pooled["ndb_ratio"] == pytest.approx((0.03**2 / 2 + 0.05**2 / 2) ** 0.5) and "nmi" not in pooled
    sampling = CLAIMS[1]
    dcgmm, flat = dict(ndb_ratio=0.74, seeds=1), dict(ndb_ratio=0.82, seeds=1)
    assert compare(dcgmm, flat, sampling).verdict == "better"  # against the floor alone
    borrowed = compare(dcgmm, flat, sampling, pooled)
    assert borrowed.verdict == "equal" and borrowed.margin == pytest.approx(2 * (2 * pooled["ndb_ratio"] ** 2) ** 0.5)
    own = compare(dict(ndb_ratio=0.74, ndb_ratio_sd=0.001), dict(ndb_ratio=0.82, ndb_ratio_sd=0.001), sampling, pooled)
    assert own.verdict == "better"  # rows with their own spread keep it


def test_outliers_compare_class_by_class_with_the_class_spread_as_noise():
    """Outlier detection is compared over the held-out classes both rows have, paired by class:
    the mean difference against twice the standard deviation of the per-class differences over
    sqrt(n); a row's class without a partner is left out; with one common class, the seeds' spread."""
    from dcgmm.results.verdict import CLAIMS, compare

    outliers = next(c for c in CLAIMS if c.metric == "auroc")
    dcgmm = dict(auroc={0: 0.90, 1: 0.80, 2: 0.85}, auroc_sd={0: 0.01, 1: None, 2: None})
    flat = dict(auroc={"0": 0.88, "1": 0.75, "2": 0.86, "3": 0.99}, auroc_sd={})  # as read back from JSON; class 3: the flat row only
    got = compare(dcgmm, flat, outliers)
    differences = [0.02, 0.05, -0.01]  # mean 0.02, standard deviation 0.03
    assert got.dcgmm == pytest.approx(0.85) and got.flat == pytest.approx((0.88 + 0.75 + 0.86) / 3)
    assert got.difference == pytest.approx(sum(differences) / 3)
    assert got.margin == pytest.approx(2 * 0.03 / 3**0.5) and got.verdict == "equal"  # 0.02 < 0.0346
    assert "3 held-out classes, paired" in got.text()
    consistent = compare(dict(auroc={0: 0.90, 1: 0.80, 2: 0.85}), dict(auroc={0: 0.87, 1: 0.78, 2: 0.81}), outliers)
    assert consistent.verdict == "better"
    assert consistent.margin == pytest.approx(max(2 * statistics.stdev([0.03, 0.02, 0.04]) / 3**0.5, outliers.floor))
    one = compare(dict(auroc={0: 0.897}, auroc_sd={0: 0.004}), dict(auroc={0: 0.89}, auroc_sd={0: None}), outliers, {"auroc": 0.003})
    assert one.margin == pytest.approx(2 * (0.004**2 + 0.003**2) ** 0.5) and one.verdict == "equal"  # 0.007 < 0.01: the seeds' noise, one borrowed
    assert "class 0 only" in one.text()
    assert compare(dict(auroc={1: 0.9}), dict(auroc={0: 0.8}), outliers).verdict == "not measured"  # no class in common


def test_authors_sampler_is_judged_beside_the_learned_one_with_borrowed_noise():
    """The kept models' NDB/B under the authors' sampler is a claim of its own; while each row has one
    model it has no spread, so it borrows the learned sampler's pooled seed spread (not the bare 0.05 floor), and
    says so; rows without the figures are "not measured yet"."""
    from dcgmm.results.verdict import CLAIMS, compare, verdict_markdown

    authors = next(c for c in CLAIMS if c.metric == "ndb_authors")
    dcgmm, flat = dict(ndb_authors=0.40, ndb_authors_n=1, seeds=2), dict(ndb_authors=0.47, ndb_authors_n=1, seeds=2)
    alone = compare(dcgmm, flat, authors)
    assert alone.verdict == "better" and alone.margin == pytest.approx(0.05)  # the floor alone
    borrowed = compare(dcgmm, flat, authors, {"ndb_ratio": 0.03})
    assert borrowed.margin == pytest.approx(2 * (2 * 0.03**2) ** 0.5) and borrowed.verdict == "equal"  # 0.07 < 0.085
    assert "models 1 and 1; noise: the pooled seed spread of ndb_ratio" in borrowed.text()

    def row(row_id, ndb, authors_ndb):
        return dict(row_id=row_id, label=row_id, method="sgd", nmi=0.5, ndb_ratio=ndb, ndb_authors=authors_ndb, auroc={0: 0.9}, seeds=1)

    rows = [row("dcgmm2", 0.30, 0.80), row("flat_same_k:dcgmm2", 0.60, 0.20), row("flat_same_params:dcgmm2", 0.20, None)]
    text = "\n".join(verdict_markdown("MNIST", rows))
    assert "**Sampling** (NDB/B): mixed (1 better, 0 equal, 1 worse of 2 measured)" in text  # the learned spread
    assert "**Sampling, the authors' sampler** (NDB/B): DCGMM worse than the flat GMM in every comparison: the claim does not hold here (0 better, 0 equal, 1 worse of 1 measured; 1 not measured yet)" in text

    # two kept models a row: their own spread, and the rule stops saying the learned one stands in
    own = compare(dict(ndb_authors=0.40, ndb_authors_sd=0.03, seeds=2), dict(ndb_authors=0.47, ndb_authors_sd=0.04, seeds=2), authors, {"ndb_ratio": 0.01, "ndb_authors": 0.015})
    assert own.margin == pytest.approx(2 * 0.05) and own.verdict == "equal" and "ndb_ratio" not in own.text()  # 2*sqrt(0.03²+0.04²), not a pooled spread
    from dcgmm.results.report import verdict_rule

    assert "stands in" in verdict_rule({}, {"ndb_ratio": 0.03}) and "stands in" not in verdict_rule({}, {"ndb_ratio": 0.03, "ndb_authors": 0.015})


def test_a_pair_of_runs_counts_once():
    """Two compared rows made of the same runs (a flat GMM with as many parameters that got the
    same K) count once per claim; the second says whose runs they are."""
    from dcgmm.results.verdict import verdict_markdown

    common = dict(method="sgd", nmi=0.5, ndb_ratio=0.6, auroc={0: 0.8}, seeds=1, runs_main=["m/flat_k49_s1"], runs_outliers=["m/flat_k49_outliers_held0_s1"])
    rows = [dict(row_id="dcgmm2", label="B", method="sgd", nmi=0.5, ndb_ratio=0.3, auroc={0: 0.9}, seeds=1, runs_main=["m/b"], runs_outliers=["m/bo"]),
            dict(common, row_id="flat_same_k:dcgmm2", label="flat K"), dict(common, row_id="flat_same_params:dcgmm2", label="flat params")]
    text = "\n".join(verdict_markdown("MNIST", rows))
    assert "**Sampling** (NDB/B): DCGMM better than the flat GMM in every comparison (1 better, 0 equal, 0 worse of 1 measured)" in text
    assert "**Outlier detection** (AUROC): DCGMM better than the flat GMM in every comparison (1 better, 0 equal, 0 worse of 1 measured)" in text
    assert "sampling: not counted (the same runs as the flat GMM with the same K)" in text


def test_verdict_words_follow_the_counts():
    """"mixed" only when a claim has both better and worse comparisons; no worse (or no better)
    among several says so in its words, and every summary carries its counts."""
    from dcgmm.results.verdict import _summary

    assert _summary(["better", "equal", "better"], "the circuit").startswith("DCGMM better than or equal to the circuit (2 better, 1 equal, 0 worse of 3")
    assert _summary(["equal", "worse", "equal"], "the circuit").startswith("DCGMM worse than or equal to the circuit (0 better, 2 equal, 1 worse")
    assert _summary(["better", "worse"], "x").startswith("mixed (1 better, 0 equal, 1 worse")
    assert _summary(["worse", "worse", "not measured"], "x") == "DCGMM worse than x in every comparison: the claim does not hold here (0 better, 0 equal, 2 worse of 2 measured; 1 not measured yet)"


@pytest.mark.parametrize(
    "change, fragment",
    [
        (dict(record_version=1), "written by another code version (record version 1"),
        (dict(preset="full"), "a record of preset 'full', not 'tiny'"),
        (dict(key="0123456789abcdef"), "made with other settings"),
    ],
)
def test_relaunch_refuses_a_foreign_record_naming_the_file(tiny_plan, tmp_path, capsys, change, fragment):
    preset, planner = tiny_plan
    numbers = {row: dict(nmi=0.5, ndb=0.5, auroc=0.9) for row in ("dcgmm", "flat", "em")}
    write_records(preset, planner, tmp_path / "records", numbers)
    target = tmp_path / "records" / "mnist" / "flat_k36_s12345.json"
    target.write_text(json.dumps({**json.loads(target.read_text()), **change}))
    before = {p: p.read_bytes() for p in (tmp_path / "records").rglob("*.json")}
    assert launch.main(["preset=tiny", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0] and fragment in err[0], err
    assert {p: p.read_bytes() for p in (tmp_path / "records").rglob("*.json")} == before  # nothing touched
    assert not (tmp_path / "RESULTS.md").exists() and not (tmp_path / "runs").exists()


def test_failed_records_are_reported_and_placement_overrides_keep_the_keys(tiny_plan, tmp_path):
    """A failed run's record is listed under "Failed runs" (its key is not checked: it is trained
    again), and overrides that only say where a run trains (trainer=gpu, data.on_device=true) keep
    the records' keys, so a CPU-made table continues on a GPU machine."""
    preset, planner = tiny_plan
    numbers = {row: dict(nmi=0.5, ndb=0.5, auroc=0.9) for row in ("dcgmm", "flat", "em")}
    write_records(preset, planner, tmp_path / "records", numbers)
    target = tmp_path / "records" / "mnist" / "flat_k36_s12345.json"
    target.write_text(json.dumps(dict(error="RuntimeError: out of memory", key="stale", record_version=RECORD_VERSION, preset="tiny")))
    assert launch.main(["preset=tiny", f"out={tmp_path}", "mode=report"]) == 1
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Failed runs" in text and "mnist/flat_k36_s12345: RuntimeError: out of memory" in text
    payload = json.loads((tmp_path / "tiny.json").read_text())
    assert [r["error"] for r in payload["runs"] if r["name"] == "flat_k36_s12345"] == ["RuntimeError: out of memory"]

    on_gpu = Planner(preset, ["trainer=gpu", "data.on_device=true", "trainer.devices=2"]).plan(["mnist"])
    for key, spec in planner.runs.items():
        assert run_key(on_gpu.runs[key], preset) == run_key(spec, preset)
    other = Planner(preset, ["trainer.max_epochs=3"]).plan(["mnist"])
    spec = next(s for s in planner.runs.values() if s.method == "sgd")
    assert run_key(other.runs[spec.key], preset) != run_key(spec, preset)  # what it computes


def _write_many(path, size, times):
    for i in range(times):
        write_json(path, dict(writer=size, values=list(range(size)), i=i))


def test_two_writers_of_one_record_never_leave_a_broken_file(tmp_path):
    """Two relaunches at once write the same record: every read in between finds a whole record
    (a temporary file, then a rename), never a mix or a truncated file."""
    path = tmp_path / "mnist" / "run.json"
    write_json(path, dict(writer=0, values=[], i=-1))
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(path, size, 150)) for size in (20_000, 30_000)]
    for w in writers:
        w.start()
    reads = 0
    while any(w.is_alive() for w in writers):
        record = json.loads(path.read_text())  # raises on a partial file
        assert len(record["values"]) == record["writer"]
        reads += 1
    assert all(w.exitcode == 0 for w in writers) and reads > 0
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temporary file left


@pytest.mark.parametrize(
    "words, fragment",
    [
        (["preset=nope"], "unknown preset 'nope'; available presets: full, small, tiny"),
        (["preset=tiny", "mode=evaluate"], "mode=evaluate needs label=<name>"),
        (["preset=tiny", "mode=fast"], "mode=fast unknown; use one of train, evaluate, samples, report, plan"),
        (["preset=tiny", "mode=samples", "top_s=2"], "mode=samples takes no run overrides (top_s=2); the samplers are the preset's"),
        (["preset=tiny", "methods=[sgd,bogus]"], "methods ['bogus'] unknown"),
        (["preset=tiny", "datasets=cifar"], "datasets ['cifar'] unknown"),
        (["preset=tiny", "--multirun"], "--multirun: the results entry point takes key=value words only"),
        (["preset=tiny", "hydra.sweep.dir=/tmp/x"], "the results entry point sets the sweep folder itself; give out=<folder>"),
        (["preset=tiny", "kind=all"], "kind=all unknown; use main"),
        (["preset=tiny", "out=" + str(ROOT / "results")], "the tiny preset never writes to results/"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(words, fragment, capsys):
    assert launch.main(words) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_unknown_preset_from_the_command_line():
    result = subprocess.run([sys.executable, "results.py", "preset=nope"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: unknown preset 'nope'; available presets: full, small, tiny (or a path to a preset .yaml)"]


def test_an_experiment_a_preset_names_must_exist(tmp_path):
    text = (ROOT / "conf" / "results" / "tiny.yaml").read_text().replace("dcgmm: [dcgmm2]", "dcgmm: [dcgmm9]")
    (tmp_path / "odd.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"dcgmm 'dcgmm9' needs the experiment table_dcgmm9; experiments: table_dcgmm2, "):
        load_preset(str(tmp_path / "odd.yaml"))


def test_em_samples_follow_the_samplers_options():
    """sample_em draws a kept EM mixture as the DCGMM sampler draws: components by the weights, or
    uniformly (top=uniform, the authors' flat GMM sampler), or i mod K (top=cycle); standard
    deviations divided by the divisor (chi-square of the component counts, spread against sd/divisor)."""
    from types import SimpleNamespace

    import numpy as np
    from scipy.stats import chisquare

    from dcgmm.results.jobs import sample_em

    means = np.stack([np.full(16, 0.2), np.full(16, 0.5), np.full(16, 0.8)])
    mixture = SimpleNamespace(weights_=np.array([0.8, 0.1, 0.1]), means_=means, covariances_=np.full((3, 16), 0.01))
    n = 6000
    for options, expected in (({"divisor": 1.0}, mixture.weights_ * n), ({"top": "uniform", "divisor": 10.0}, np.full(3, n / 3))):
        x = sample_em(mixture, n, options).reshape(n, 16).numpy()
        component = np.abs(x.mean(1, keepdims=True) - means[:, 0]).argmin(1)
        counts = np.bincount(component, minlength=3)
        assert chisquare(counts, expected).pvalue > 1e-3, (options, counts)
        sd = (x - means[component]).std()
        assert sd == pytest.approx(0.1 / options["divisor"], rel=0.05)
    cycled = sample_em(mixture, 7, {"top": "cycle", "divisor": 1e9}).reshape(7, 16).numpy()
    np.testing.assert_allclose(cycled, means[np.arange(7) % 3], atol=1e-6)
    with pytest.raises(ConfigError, match=r"^divisor=\{1: 2.0\}: an EM mixture is one flat layer; give one divisor$"):
        sample_em(mixture, 2, {"divisor": {1: 2.0}})


def test_a_samples_relaunch_knows_figures_of_the_same_sampler_after_json():
    """The figures a samples pass stored (options read back from JSON: string keys) count as the
    preset's sampler as it is now; a changed file setting or a failed pass does not."""
    from dcgmm.results.jobs import sampled_as_planned, samplers
    from dcgmm.results.plan import RunSpec

    _, preset = load_preset("full")
    spec = RunSpec("mnist", "table_dcgmm2_pool_s23456", "main", "sgd", "table_dcgmm2_pool")
    wanted = samplers(preset, spec)
    assert wanted["authors"]["file"] == "authors_C" and wanted["authors"]["options"]["top_s"] == {1: 2}
    record = json.loads(json.dumps({"samplers": {name: dict(s, ndb_ratio=0.5) for name, s in wanted.items()}}))
    assert record["samplers"]["authors"]["options"]["top_s"] == {"1": 2}  # as stored
    assert sampled_as_planned(record, preset, spec)
    changed = json.loads(json.dumps(record))
    changed["samplers"]["authors"]["options"]["sharpening"]["iterations"] = 5
    assert not sampled_as_planned(changed, preset, spec)
    assert not sampled_as_planned(dict(record, samplers={**record["samplers"], "error": "boom"}), preset, spec)
    assert not sampled_as_planned({}, preset, spec)


def test_the_report_counts_machines_and_code_versions_of_its_records():
    from dcgmm.results.report import provenance

    records = [dict(machine="AMD EPYC", code="abc123"), dict(machine="Intel Xeon", code="abc123+changes"),
               dict(machine="Intel Xeon", code="def456"), dict(machine="Intel Xeon")]
    where, code = provenance(records)
    assert where == "Intel Xeon (3 runs), AMD EPYC (1 run)"
    assert "3 records from 2 commits (1 of them launched with uncommitted changes" in code
    assert "1 record is older than that stamp" in code
    assert "older" not in provenance(records[:3])[1]
    assert "uncommitted" not in provenance([records[0], records[2]])[1]


def test_code_version_marks_changed_code_but_not_changed_records(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "src").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "src" / "model.py").write_text("K = 25\n")
    (tmp_path / "results" / "run.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    commit = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "results" / "run.json").unlink()  # a record moved aside for a rerun: the code is the commit's
    (tmp_path / "results" / "RESULTS.md").write_text("table\n")
    assert code_version(tmp_path) == commit
    (tmp_path / "src" / "model.py").write_text("K = 36\n")
    assert code_version(tmp_path) == commit + "+changes"

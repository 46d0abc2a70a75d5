"""The probabilistic-circuit peer (dcgmm.results.peers, the extra 'peers'): its adapter on a tiny model,
its verdict in plain words, and the one-line refusal when the library is missing."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dcgmm.errors import ConfigError
from tests.conftest import DATA_DIR, ROOT, needs_mnist

needs_spflow = pytest.mark.skipif(
    importlib.util.find_spec("spflow") is None, reason="needs the extra 'peers' (pip install -e '.[peers]'): spflow is not installed"
)
TINY = dict(depth=1, region_nodes=3, leaves=3, repetitions=2, epochs=1, batch_size=50, n_train=300, seed=0)


@needs_spflow
def test_circuit_is_a_normalised_density_over_its_pixels():
    """Two pixels, two classes: exp(log p(x)) of the adapter integrates to 1 over the plane
    (a Riemann sum on a grid wide enough for leaves of std 0.5 around [0, 1])."""
    from dcgmm.results.peers import CircuitSettings, build_circuit, log_likelihood

    torch.manual_seed(0)
    circuit, _ = build_circuit(2, 2, CircuitSettings(depth=1, region_nodes=2, leaves=3, repetitions=2), torch.rand(50, 2))
    grid = torch.linspace(-3.5, 4.5, 401)
    step = float(grid[1] - grid[0])
    points = torch.cartesian_prod(grid, grid)  # (401^2, 2)
    mass = log_likelihood(circuit, points, batch_size=20000).exp().sum().item() * step * step
    assert mass == pytest.approx(1.0, abs=2e-3)


@needs_spflow
@needs_mnist
def test_circuit_adapter_on_a_tiny_model_gives_a_record_the_table_reads(tmp_path):
    """A few hundred images, one epoch: training raises the test log-likelihood over the untrained
    circuit; the AUROC equals scikit-learn's on the model's own log-likelihoods; accuracy, the std
    floor and the bits/dim identity hold; the samples have the images' shape; the run record fills
    the table's density, classifier, NDB and outlier columns and leaves the clustering empty."""
    from dcgmm.results.baselines import split_for_baseline
    from dcgmm.results.peers import CircuitSettings, circuit_baseline, class_log_joint, log_likelihood

    untrained = circuit_baseline("mnist", DATA_DIR, held_out=0, settings=CircuitSettings(**{**TINY, "epochs": 0}))
    result = circuit_baseline("mnist", DATA_DIR, held_out=0, settings=CircuitSettings(**TINY), samples=12)
    assert result["train_images"] == 300 and result["outliers"] > 0 and result["epochs"] == 1
    assert result["loglik"] > untrained["loglik"] + 20  # nats per image: six steps learned something

    split = split_for_baseline("mnist", DATA_DIR, held_out=0)
    model = result["model"]
    inliers = torch.from_numpy(split["test_x"].reshape(len(split["test_x"]), -1) / 255.0).float()
    outliers = torch.from_numpy(split["outlier_x"].reshape(len(split["outlier_x"]), -1) / 255.0).float()
    a, b = log_likelihood(model, inliers).numpy(), log_likelihood(model, outliers).numpy()
    labels = np.r_[np.zeros(len(a)), np.ones(len(b))]
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, -np.r_[a, b]), abs=1e-6)
    assert result["loglik"] == pytest.approx(float(a.mean()), rel=1e-6)
    with torch.no_grad():
        predicted = class_log_joint(model, inliers).argmax(1).numpy()
    assert result["acc"] == pytest.approx(float((predicted == split["test_y"]).mean()))
    leaf_std = [p.exp() for name, p in model.named_parameters() if name.endswith("log_scale")]
    assert leaf_std and min(float(s.min()) for s in leaf_std) >= math.sqrt(0.05) - 1e-6
    assert 0 < result["bpd"] < 8 + 1 and result["samples"].shape == (12, 1, 28, 28)
    assert 0 <= float(result["samples"].min()) and float(result["samples"].max()) <= 1


def test_verdict_against_the_circuit_in_plain_words():
    """Every DCGMM row is compared with the dataset's circuit row; a circuit has no clusters, so
    clustering is 'not applicable' against it (not 'not measured'), and the summary line of the
    flat-GMM comparisons does not count the circuit."""
    from dcgmm.results.verdict import verdict_markdown

    rows = [
        dict(row_id="dcgmm2", label="B", method="sgd", nmi=0.5, ndb_ratio=0.6, auroc={0: 0.9}, seeds=1),
        dict(row_id="flat_same_k:dcgmm2", label="A flat", method="sgd", nmi=0.6, ndb_ratio=0.5, auroc={0: 0.95}, seeds=1),
        dict(row_id="circuit", label="Circuit", method="circuit", nmi=None, ndb_ratio=0.3, auroc={0: 0.8}, seeds=1, not_applicable=["nmi"]),
    ]
    text = "\n".join(verdict_markdown("MNIST", rows))
    assert "**Clustering** (NMI): DCGMM worse than the flat GMM and EM with the same K in every comparison" in text
    assert "(1 better" not in text.split("**Against")[0]  # the circuit's outlier 'better' is not in the flat summary
    against = next(line for line in text.splitlines() if line.startswith("- **Against the probabilistic circuit**"))
    assert "clustering (NMI) not applicable to the circuit" in against
    assert "sampling (NDB/B) DCGMM worse than the circuit in every comparison" in against
    assert "outlier detection (AUROC) DCGMM better than the circuit in every comparison" in against
    assert "B against the probabilistic circuit (Circuit): clustering: not applicable; sampling **worse**" in text


def peers_preset(tmp_path, compare: str, extra: str = "") -> str:
    """The tiny preset with another compare list, as a preset file (``preset=<path>``)."""
    text = (ROOT / "conf" / "results" / "tiny.yaml").read_text().replace("compare: [flat_same_k, em_same_k]", f"compare: {compare}")
    assert compare in text
    path = tmp_path / "peers.yaml"
    path.write_text(text + extra)
    return str(path)


def test_compare_circuit_without_the_library_is_one_line(tmp_path, monkeypatch, capsys):
    """A preset whose compare names the circuit while spflow is missing: one line naming the extra,
    exit status 2, before anything is trained or written."""
    import dcgmm.results.peers
    from dcgmm.results import launch

    real = importlib.util.find_spec
    monkeypatch.setattr(dcgmm.results.peers.importlib.util, "find_spec", lambda name, *a: None if name == "spflow" else real(name, *a))
    out = tmp_path / "out"
    assert launch.main([f"preset={peers_preset(tmp_path, '[flat_same_k, circuit]')}", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the library spflow, which is not installed" in err[0] and "pip install -e '.[peers]'" in err[0], err
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"^the peer row 'circuit' needs the library spflow"):
        dcgmm.results.peers.require_peer("circuit")


@needs_spflow
@needs_mnist
def test_results_pipeline_trains_and_reports_the_circuit_row(tmp_path):
    """The tiny preset with compare: [circuit]: the circuit's runs (all classes, class 0 held out)
    write records, and the table has its row with bits/dim, classifier accuracy, NDB/B and AUROC,
    no clustering, and the verdict line against it."""
    from dcgmm.results import launch

    extra = "circuit: {depth: 1, region_nodes: 3, leaves: 3, repetitions: 2, epochs: 1, batch_size: 50, n_train: 300}\n"
    out = tmp_path / "out"
    assert launch.main([f"preset={peers_preset(tmp_path, '[circuit]', extra)}", f"out={out}"]) == 0
    record = json.loads((out / "records" / "mnist" / "circuit_held0.json").read_text())
    assert record["auroc"] is not None and record["train_images"] == 300 and "error" not in record
    rows = {row["row_id"]: row for row in json.loads((out / "peers.json").read_text())["rows"]["mnist"]}
    circuit = rows["circuit"]
    assert circuit["bpd"] is not None and circuit["acc"] is not None and circuit["ndb_ratio"] is not None
    assert circuit["auroc_mean"] == pytest.approx(record["auroc"]) and circuit["nmi"] is None
    assert rows["dcgmm2"]["bpd"] is None  # not a density over pixels
    text = (out / "RESULTS.md").read_text()
    assert "| Circuit (spflow RAT-SPN) |" in text and "- **Against the probabilistic circuit** (Circuit (spflow RAT-SPN))" in text


@needs_mnist
def test_methods_option_trains_only_the_named_runs(tmp_path, capsys):
    """methods=em trains the EM runs of the tiny preset and nothing else (the other rows stay empty
    in the report); basic launcher: one job after another in this process."""
    from dcgmm.results import launch

    assert launch.main(["preset=tiny", f"out={tmp_path}", "methods=em", "hydra/launcher=basic"]) == 0
    assert sorted(p.name for p in (tmp_path / "records" / "mnist").glob("*.json")) == ["em_k25_held0.json", "em_k36.json"]
    assert "2 of 6 runs finished" in (tmp_path / "RESULTS.md").read_text()
    records = {p: p.read_bytes() for p in (tmp_path / "records").rglob("*.json")}
    assert launch.main(["preset=tiny", f"out={tmp_path}", "methods=em", "hydra/launcher=basic"]) == 0  # a relaunch: nothing to train
    assert "preset tiny: 6 runs, 2 with a finished record" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (tmp_path / "records").rglob("*.json")} == records


def test_circuit_row_is_one_per_dataset_and_adds_no_other_rows():
    """compare: [flat_same_k, circuit] plans the DCGMM row, its flat GMM and one circuit row (its
    runs on all classes and per held-out class): no EM row, no row twice, peers launched last."""
    from dcgmm.results.plan import Planner, load_preset

    _, preset = load_preset("tiny")
    preset["compare"] = ["flat_same_k", "circuit"]
    planner = Planner(preset).plan(["mnist"])
    ids = [row.row_id for row in planner.rows]
    assert ids == ["dcgmm2", "flat_same_k:dcgmm2", "circuit"]
    assert [spec.name for spec in planner.runs.values() if spec.method == "circuit"] == ["circuit", "circuit_held0"]
    assert [spec.method for spec in planner.ordered_runs()][-2:] == ["circuit", "circuit"]

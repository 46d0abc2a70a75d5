"""Pretrained models (dcgmm.app.pretrained): a model added to the folder loads through sample.py
(pretrained=<name>) and DCGMMEstimator.from_pretrained with the weights of its checkpoint; an
unknown name lists the available ones; a file whose SHA-256 differs from the manifest's is refused
with one line naming it, before anything is loaded."""

import json

import pytest
import torch

from dcgmm.app import pretrained
from dcgmm.app.api import DCGMMEstimator
from dcgmm.app.checkpoints import load_module
from dcgmm.errors import ConfigError
from tests.conftest import ROOT, needs_both

CHECKPOINT = ROOT / "tests" / "reference" / "checkpoint_b_small.ckpt"  # a small topology B, trained as train.py trains


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    monkeypatch.setenv("DCGMM_PRETRAINED", str(tmp_path))
    assert pretrained.main(["add", "B_mnist", str(CHECKPOINT), "--record", "tests/reference/checkpoint_b_small.ckpt"]) == 0
    return tmp_path


def test_an_added_model_loads_with_its_weights_and_is_smaller(shipped):
    entry = pretrained.available()["B_mnist"]
    path = pretrained.resolve("B_mnist")
    assert path == shipped / "B_mnist.ckpt" and entry["dataset"] == "mnist" and entry["topology"] == "B"
    assert entry["bytes"] == path.stat().st_size < CHECKPOINT.stat().st_size  # no optimiser or loop state
    original, slim = load_module(CHECKPOINT), load_module(path)
    torch.testing.assert_close(slim.state_dict(), original.state_dict(), rtol=0, atol=0)  # the same weights
    assert slim.annealing.state_dict() == original.annealing.state_dict()  # and the annealing state, which the objective depends on
    assert any(state["steps"] for state in original.annealing.state_dict().values())  # a trained state, not a fresh one
    estimator = DCGMMEstimator.from_pretrained("dcgmm2", "mnist")  # a config name, like the letter
    torch.testing.assert_close(estimator.module.cpu().state_dict(), original.state_dict(), rtol=0, atol=0)
    assert DCGMMEstimator.from_pretrained("B").sample(4, seed=0).shape == (4, 1, 28, 28)


def test_sample_py_draws_from_a_pretrained_model(shipped, sample_cfg):
    from dcgmm.app.tasks import sample

    out = sample(sample_cfg("pretrained=B_mnist", "n=8", "logger=none"))
    reference = sample(sample_cfg(f"ckpt_path={shipped / 'B_mnist.ckpt'}", "n=8", "logger=none"))
    assert torch.equal(out["images"], reference["images"])
    with pytest.raises(ConfigError, match=r"^give ckpt_path=\.\.\. or pretrained=\.\.\., not both$"):
        sample(sample_cfg("pretrained=B_mnist", f"ckpt_path={CHECKPOINT}", "logger=none"))


def test_unknown_name_lists_the_available_ones(shipped):
    with pytest.raises(ConfigError, match=r"^pretrained=E_fashion is unknown; available: B_mnist$"):
        pretrained.resolve("E_fashion")
    with pytest.raises(ConfigError, match=r"^pretrained=C_mnist is unknown; available: B_mnist$"):
        DCGMMEstimator.from_pretrained("C", "mnist")


def test_a_changed_file_is_refused_before_loading(shipped, monkeypatch, capsys):
    path = shipped / "B_mnist.ckpt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "load_module", lambda *a, **k: pytest.fail("loaded a file whose checksum differs"))
    with pytest.raises(ConfigError, match=r"^pretrained=B_mnist: .*B_mnist\.ckpt does not match its SHA-256 in the manifest; nothing was loaded"):
        pretrained.resolve("B_mnist")
    manifest = json.loads((shipped / "manifest.json").read_text())
    assert list(manifest["models"]) == ["B_mnist"] and len(manifest["models"]["B_mnist"]["sha256"]) == 64


SHIPPED = ROOT / "pretrained"


def test_the_shipped_models_are_the_ones_their_records_measured(monkeypatch):
    """pretrained/ holds the main models of the results table (B, C, E and the flat GMMs with the
    same K as B/C and as E, on both datasets, one seed), at most 30 MB with their manifest; each
    file matches its SHA-256 and is the model of its source record (parameters, top-layer K)."""
    manifest = json.loads((SHIPPED / "manifest.json").read_text())["models"]
    assert set(manifest) == {f"{m}_{d}" for m in ("B", "C", "E", "flat36", "flat25") for d in ("mnist", "fashion")}
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) <= 30 * 2**20
    monkeypatch.delenv("DCGMM_PRETRAINED", raising=False)
    for name, entry in manifest.items():
        record = json.loads((ROOT / entry["source"]).read_text())
        assert record["dataset"] == entry["dataset"] == name.split("_")[1] and record["key"]  # a finished run of the full preset
        path = pretrained.resolve(name)
        assert set(torch.load(path, map_location="cpu", weights_only=False)) <= set(pretrained.SHIPPED)  # no optimiser state, no local paths
        module = load_module(path)
        assert sum(p.numel() for p in module.parameters()) == record["params"] and module.stack.top_gmm.K == record["K"], name


@needs_both
@pytest.mark.parametrize("name", ["flat25_mnist", "flat36_fashion"])
def test_a_shipped_flat_gmm_scores_its_records_test_numbers(name, tmp_path):
    """Tested again on its dataset's test split, a shipped model gives the test numbers its record
    holds (the flat GMMs: a few seconds each)."""
    from dcgmm.app.config import compose
    from dcgmm.app.evaluation import evaluate

    entry = pretrained.available()[name]
    record = json.loads((ROOT / entry["source"]).read_text())
    words = [f"ckpt_path={pretrained.resolve(name)}", f"data={entry['dataset']}", "callbacks=none", "++trainer.enable_progress_bar=false"]
    metrics, _ = evaluate(compose("evaluate", words, output_dir=tmp_path))
    for key in ("test/loss", "test/acc"):
        assert metrics[key] == pytest.approx(record["metrics"][key], rel=1e-5), key

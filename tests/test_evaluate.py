"""evaluate.py end to end, its bad input, and the outlier-detection experiments."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from dcgmm.app.evaluation import evaluate
from dcgmm.app.module import DCGMMModule
from dcgmm.app.tasks import train
from dcgmm.data import DataError
from dcgmm.errors import ConfigError
from tests.conftest import ROOT, compose_train, dataset_available, needs_both, needs_mnist

NINE = "[1,2,3,4,5,6,7,8,9]"


def compose_eval(overrides: list[str], tmp_path: Path) -> DictConfig:
    """Compose conf/evaluate.yaml like `python evaluate.py OVERRIDES`, writing only below tmp_path."""
    return compose_train(overrides, tmp_path, "evaluate.yaml")


def run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for fragment in fragments:
        assert fragment in last, last
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A flat GMM (K=9) trained for 5 batches by train.py."""
    if not dataset_available("mnist"):
        pytest.skip("MNIST cache missing: run `make setup`")
    log_dir = tmp_path_factory.mktemp("train")
    result = run(
        "train.py", f"paths.log_dir={log_dir}", "trainer.max_epochs=1", "+trainer.limit_train_batches=5",
        "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=1", "model=flat_gmm", "model.K=9", "logger=csv",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = log_dir.rglob("last.ckpt")
    return path


# ------------------------------------------------------------------------------------ evaluate.py
@needs_mnist
def test_evaluate_cli_prints_and_writes_metrics(checkpoint, tmp_path):
    result = run("evaluate.py", f"ckpt_path={checkpoint}", f"paths.log_dir={tmp_path}", "logger=csv", f"data.classes={NINE}")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "eval" / "runs").iterdir()
    saved = json.loads((run_dir / "metrics.json").read_text())
    metrics = saved["metrics"]
    assert saved["top_gmm_layer"] == "L1_gmm" and saved["K"] == 9 and saved["pixel_density"] is True
    # K = 9 = number of test classes: the one-to-one (Hungarian) accuracy is reported
    for key in ("test/loss", "test/top/loss", "test/loglik", "test/bpd", "test/acc", "test/cluster/purity",
                "test/cluster/nmi", "test/cluster/ari", "test/cluster/hungarian_acc"):
        assert key in metrics, key
        assert f"\n{key} " in result.stdout, key  # the printed table
    assert metrics["test/top/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)  # one GMM layer
    assert 0 <= metrics["test/cluster/purity"] <= 1 and metrics["test/bpd"] > 0
    (metrics_csv,) = (run_dir / "csv").rglob("metrics.csv")
    assert "test/cluster/nmi" in metrics_csv.read_text().splitlines()[0]
    assert (run_dir / "eval.log").exists() and (run_dir / ".hydra" / "config.yaml").exists()


@needs_mnist
def test_evaluate_in_process_omits_hungarian_when_K_differs_from_classes(checkpoint, tmp_path):
    cfg = compose_eval([f"ckpt_path={checkpoint}", "+trainer.limit_test_batches=5"], tmp_path)
    metrics, objects = evaluate(cfg)
    assert "test/cluster/nmi" in metrics and "test/cluster/hungarian_acc" not in metrics  # K=9, 10 classes
    assert metrics["test/bound"] <= metrics["test/loglik"] + 1e-3
    assert (tmp_path / "metrics.json").exists()


@needs_mnist
def test_evaluate_with_outliers(checkpoint, tmp_path):
    cfg = compose_eval([f"ckpt_path={checkpoint}", "+outlier=default", "outlier.held_out=0", "+trainer.limit_test_batches=3"], tmp_path)
    metrics, _ = evaluate(cfg)
    assert 0.0 <= metrics["test/auroc"] <= 1.0
    saved = json.loads((tmp_path / "outliers.json").read_text())
    assert saved["outlier_classes"] == [0] and saved["inlier_classes"] == list(range(1, 10))
    assert saved["outliers"] == 980 and saved["inliers"] == 3 * cfg.data.eval_batch_size == 1500  # 3 test batches


@needs_mnist
def test_evaluate_with_the_ndb_callback_logs_the_results_tables_measurement(checkpoint, tmp_path):
    """'callbacks=[eval,ndb]': test/ndb_ratio and test/ndb_js equal the shared measurement
    (dcgmm.app.ndb.training_bins + sample_quality, as the results table makes it) recomputed here, and
    the sample grid is written."""
    from dcgmm.app.ndb import sample_quality, training_bins

    settings = ["callbacks.ndb.samples=200", "callbacks.ndb.bins=10", "callbacks.ndb.kmeans_samples=1000", "callbacks.ndb.train_images=3000", "callbacks.ndb.cache_dir=null"]
    cfg = compose_eval([f"ckpt_path={checkpoint}", "callbacks=[eval,ndb]", "+trainer.limit_test_batches=2", *settings], tmp_path)
    metrics, objects = evaluate(cfg)
    callback = next(cb for cb in objects["callbacks"] if type(cb).__name__ == "SampleQualityNDB")
    assert set(callback.result) == {"plain"}  # a flat GMM has no overlapping folding to sharpen
    binning = training_bins(objects["datamodule"], bins=10, kmeans_samples=1000, train_images=3000)
    expected = sample_quality(objects["model"].stack.eval(), binning, samples=200, seed=0)["plain"].result
    assert metrics["test/ndb_ratio"] == pytest.approx(expected.ndb_ratio) and metrics["test/ndb_js"] == pytest.approx(expected.js, rel=1e-5)
    assert 0 <= metrics["test/ndb_ratio"] <= 1 and (tmp_path / "ndb_samples.png").is_file()


def test_evaluate_rejects_another_image_size(tmp_path):
    module = DCGMMModule(layers=[{"kind": "folding", "kernel_size": 14}, {"kind": "gmm", "K": 4}], input_shape=[1, 14, 14])
    path = tmp_path / "small.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    with pytest.raises(ConfigError, match=r"evaluating a checkpoint trained on another image size.*\[1, 14, 14\]") as info:
        evaluate(compose_eval([f"ckpt_path={path}"], tmp_path))
    assert "\n" not in str(info.value)


def test_evaluate_rejects_a_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"linear.weight": torch.zeros(2, 2)}, "epoch": 3}, path)
    with pytest.raises(ConfigError, match="not a checkpoint of a DCGMM model"):
        evaluate(compose_eval([f"ckpt_path={path}"], tmp_path))


@pytest.mark.parametrize(
    "script, args, fragments",
    [
        ("evaluate.py", [], ["ckpt_path is required"]),
        ("evaluate.py", ["ckpt_path=/nonexistent/model.ckpt"], ["/nonexistent/model.ckpt", "does not exist"]),
        ("evaluate.py", ["ckpt_path={junk}"], ["junk.ckpt", "not a readable checkpoint"]),
        ("train.py", ["experiment=outliers_mnist", "outlier.held_out=12"], ["held_out=12", "not a class of mnist"]),
    ],
)
def test_bad_input_is_a_one_line_error_with_exit_status_2(tmp_path, script, args, fragments):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint\n" * 10)
    log_dir = tmp_path / "logs"
    result = run(script, *[a.format(junk=junk) for a in args], f"paths.log_dir={log_dir}", "logger=csv", timeout=120)
    assert_one_line_error(result, *fragments)
    assert not list(log_dir.rglob("*.ckpt")) and not list(log_dir.rglob("metrics.json"))


# ------------------------------------------------------------------------------------ outliers
@pytest.mark.parametrize(
    "overrides, inliers, outlier_dataset, outlier_classes",
    [
        (["experiment=outliers_mnist"], list(range(1, 10)), "mnist", [0]),
        (["experiment=outliers_fashion", "outlier.held_out=[3,5]"], [0, 1, 2, 4, 6, 7, 8, 9], "fashion", [3, 5]),
        (["experiment=outliers_mnist", "outlier.dataset=fashion"], None, "fashion", None),
    ],
)
@needs_both
def test_outlier_experiment_fast_dev_run(train_cfg, tmp_path, overrides, inliers, outlier_dataset, outlier_classes):
    cfg = train_cfg(*overrides, "++trainer.fast_dev_run=true", "logger=csv", "model=flat_gmm", "model.K=9")
    assert (None if cfg.data.classes is None else list(cfg.data.classes)) == inliers  # derived from outlier.*
    metrics, objects = train(cfg)
    assert 0.0 <= float(metrics["test/auroc"]) <= 1.0
    assert (tmp_path / "outliers_roc.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "outliers.json").read_text())
    assert saved["outlier_dataset"] == outlier_dataset and saved["outlier_classes"] == outlier_classes
    assert saved["inlier_classes"] == inliers and saved["auroc"] == pytest.approx(float(metrics["test/auroc"]))
    assert saved["inliers"] == saved["outliers"] == cfg.data.eval_batch_size == 500  # fast_dev_run: one test batch, as many outliers


@needs_both
def test_every_outlier_score_and_extra_set_matches_sklearn(train_cfg, tmp_path):
    """outlier.score=sum makes test/auroc the AUROC of the summed layer objectives; every score of
    every outlier set (held-out digit, FashionMNIST, uniform noise) equals scikit-learn's AUROC of
    minus that score, recomputed here from the trained stack on the same images."""
    from sklearn.metrics import roc_auc_score

    cfg = train_cfg("experiment=outliers_mnist", "model=dcgmm2", "outlier.score=sum", "++trainer.fast_dev_run=true", "logger=csv")
    metrics, objects = train(cfg)
    callback = next(cb for cb in objects["callbacks"] if type(cb).__name__ == "OutlierDetection")
    stack = objects["model"].stack.eval()
    assert callback.extra == ["fashion", "noise"]
    assert float(metrics["test/auroc"]) == pytest.approx(float(metrics["test/auroc/sum"]))
    inliers = next(iter(objects["datamodule"].test_dataloader()))[0]  # fast_dev_run: one test batch
    sets = {"held_out": callback.images, "fashion": callback.extra_images["fashion"], "noise": callback.extra_images["noise"]}

    def objective(layer, x):
        _, raw = stack.bottom_up(x)
        return stack.layers[layer].objective(raw[layer])

    with torch.no_grad():
        for name, images in sets.items():
            x = torch.cat([inliers, images[: len(inliers)]])
            target = [0] * len(inliers) + [1] * len(inliers)
            per_layer = {f"L{i}": objective(i, x) for i in (1, 3)}
            expected = {**per_layer, "top": per_layer["L3"], "sum": per_layer["L1"] + per_layer["L3"]}
            prefix = "test/auroc" if name == "held_out" else f"test/auroc_{name}"
            for key, typical in expected.items():
                assert float(metrics[f"{prefix}/{key}"]) == pytest.approx(roc_auc_score(target, (-typical).numpy()), abs=1e-4), (name, key)
    assert float(metrics["test/auroc_noise/top"]) > 0.9  # noise is far from any digit


@pytest.mark.parametrize(
    "override, error, match",
    [
        ("outlier.held_out=12", ConfigError, r"held_out=12: class 12 is not a class of mnist"),
        ("outlier.held_out=[0,1,2,3,4,5,6,7,8,9]", ConfigError, r"holds out every class"),
        ("outlier.held_out=[]", ConfigError, r"outlier set is empty"),
        ("outlier.held_out=null", ConfigError, r"outlier set is empty"),
        ("outlier.dataset=cifar100", DataError, r"unknown dataset 'cifar100'"),
        ("outlier.dataset=cifar10", ConfigError, r"outlier set cifar10 has images of shape \[3, 32, 32\], the model expects \[1, 28, 28\]"),
        ("data.classes=[0,1,2]", ConfigError, r"data.classes=\[0, 1, 2\] includes the held-out class"),
        ("data.classes=null", ConfigError, r"data.classes=null includes the held-out class"),
        ("outlier.score=bogus", ConfigError, r"outlier.score='bogus' is unknown; use one of top, sum, layer:<i>"),
        ("outlier.score=layer:0", ConfigError, r"outlier.score='layer:0' is unknown; use one of top, sum, layer:1 "),
    ],
)
@needs_mnist
def test_bad_outlier_config_fails_before_training(train_cfg, tmp_path, override, error, match):
    cfg = train_cfg("experiment=outliers_mnist", override, "logger=csv", "trainer.max_epochs=1")
    with pytest.raises(error, match=match) as info:
        train(cfg)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.rglob("*.ckpt"))


@needs_mnist
def test_outlier_multirun_holds_out_each_class_in_turn(tmp_path):
    result = run(
        "train.py", "-m", "experiment=outliers_mnist", "outlier.held_out=0,7", f"paths.log_dir={tmp_path}",
        "++trainer.fast_dev_run=true", "logger=csv", "model=flat_gmm", "model.K=4",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    held = sorted(json.loads((job / "outliers.json").read_text())["outlier_classes"][0] for job in sweep.iterdir() if job.is_dir())
    assert held == [0, 7]


@needs_mnist
def test_outlier_roc_is_logged_to_wandb(tmp_path):
    result = run(
        "train.py", "experiment=outliers_mnist", f"paths.log_dir={tmp_path}", "logger=wandb", "model=flat_gmm", "model.K=4",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    assert (run_dir / "outliers_roc.png").exists()
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    media = wandb_run / "files" / "media"
    assert list(media.glob("images/test/roc_png_*.png")), sorted(media.rglob("*"))  # the PNG
    assert list(media.glob("table/test/roc_table_*.table.json")), sorted(media.rglob("*"))  # the curve's points

"""Every config composes and instantiates; fast_dev_run of the training task; Hydra CLI behaviour."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from dcgmm.app.tasks import train
from tests.conftest import CONFIG_DIR, ROOT, dataset_available, needs_mnist

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("[!_]*.yaml"))
DATASETS = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml") if p.stem not in ("gpu", "ddp") or torch.cuda.is_available())
LOGGERS = sorted(p.stem for p in (CONFIG_DIR / "logger").glob("*.yaml") if p.stem != "none")
DEBUGS = sorted(p.stem for p in (CONFIG_DIR / "debug").glob("*.yaml") if p.stem != "default")
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_instantiates(train_cfg, model):
    cfg = train_cfg(f"model={model}")
    module = instantiate(cfg.model)
    assert module.stack.top_gmm.K >= 1
    assert "total" in module.stack.summary_table()


@pytest.mark.parametrize("data", DATASETS)
def test_every_data_config_instantiates(train_cfg, data):
    datamodule = instantiate(train_cfg(f"data={data}").data)
    assert isinstance(datamodule, L.LightningDataModule)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_config_instantiates(train_cfg, trainer):
    assert isinstance(instantiate(train_cfg(f"trainer={trainer}").trainer), L.Trainer)


@pytest.mark.parametrize("logger", LOGGERS)
def test_every_logger_config_instantiates(train_cfg, logger):
    cfg = train_cfg(f"logger={logger}")
    loggers = [instantiate(conf) for conf in cfg.logger.values()]
    assert loggers and all(hasattr(lg, "log_metrics") for lg in loggers)


@pytest.mark.parametrize("debug", DEBUGS)
def test_every_debug_config_composes(train_cfg, debug):
    cfg = train_cfg(f"debug={debug}")
    assert cfg.task_name == "debug" and cfg.logger is None


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_instantiates(train_cfg, experiment):
    cfg = train_cfg(f"experiment={experiment}")
    instantiate(cfg.model)
    instantiate(cfg.data)


def test_overrides_reach_the_objects(train_cfg):
    cfg = train_cfg("model=flat_gmm", "model.K=49", "model.lr=0.02", "data.batch_size=50", "trainer.max_epochs=7", "seed=3")
    module = instantiate(cfg.model)
    assert module.stack.top_gmm.K == 49 and module.policies[module.stack.top_gmm.index].lr == 0.02
    assert instantiate(cfg.data).batch_size == 50
    assert instantiate(cfg.trainer).max_epochs == 7


@needs_mnist
@pytest.mark.parametrize("data", ["mnist", "fashion"])
def test_fast_dev_run_trains_and_tests(train_cfg, data, tmp_path):
    if not dataset_available(data):
        pytest.skip(f"{data} cache missing: run `make setup`")
    cfg = train_cfg(f"data={data}", "++trainer.fast_dev_run=true", "logger=csv")  # the default job: topology C
    metrics, objects = train(cfg)
    kinds = [layer.kind for layer in objects["model"].stack.layers]
    assert kinds == ["folding", "gmm", "pooling", "folding", "gmm", "classifier"], kinds
    for key in ("test/loglik", "test/bound", "test/loss", "test/acc"):
        assert key in metrics, key
    assert metrics["test/bound"] <= metrics["test/loglik"] + 1e-3  # the bound is a lower bound


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@needs_mnist
def test_train_cli_writes_checkpoint_csv_wandb_and_metrics(tmp_path):
    """One short real run: logs/<task>/runs/<date>_<time>/ with .hydra, last.ckpt, csv, wandb, log file."""
    result = run_cli(
        f"paths.log_dir={tmp_path}", "trainer.max_epochs=1", "+trainer.limit_train_batches=20",
        "+trainer.limit_val_batches=5", "+trainer.limit_test_batches=5", "trainer.log_every_n_steps=5", "logger=many_loggers", "model=flat_gmm", "model.K=9",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "train.log").exists()
    assert list((run_dir / "wandb").glob("offline-run-*"))
    for name in ("samples", "prototypes_L1_gmm", "variances_L1_gmm"):  # the SampleImages callback
        assert (run_dir / "images" / f"epoch_001_{name}.png").exists(), name
    (metrics_csv,) = (run_dir / "csv").rglob("metrics.csv")
    header = metrics_csv.read_text().splitlines()[0]
    for key in ("train/loss", "train/L1_gmm/sigma", "train/L1_gmm/lr", "val/loss", "test/bpd", "test/loglik"):
        assert key in header, key


@needs_mnist
def test_multirun_sweeps_into_separate_folders(tmp_path):
    result = run_cli("-m", f"paths.log_dir={tmp_path}", "model=flat_gmm", "model.K=4,9", "++trainer.fast_dev_run=true", "logger=csv")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1"]
    k_values = sorted((sweep / j / ".hydra" / "overrides.yaml").read_text().split("model.K=")[1].split()[0] for j in jobs)
    assert k_values == ["4", "9"]


@needs_mnist
@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run_every_topology(train_cfg, model):
    cfg = train_cfg(f"model={model}", "++trainer.fast_dev_run=true", "logger=csv")
    metrics, _ = train(cfg)
    assert "test/acc" in metrics and "test/loss" in metrics
    gmm_names = [layer.name for layer in _["model"].stack.gmm_layers]
    for name in gmm_names:
        assert f"test/{name}/loss" in metrics


@needs_mnist
def test_testing_after_training_uses_the_final_epoch(train_cfg):
    """The default checkpointing keeps the newest epoch: a deep stack's summed loss is no selection criterion."""
    cfg = train_cfg("model=dcgmm2", "trainer.max_epochs=2", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2",
                    "+trainer.limit_test_batches=2", "logger=csv", "callbacks.sample_images.every_n_epochs=10")
    _, objects = train(cfg)
    assert objects["trainer"].checkpoint_callback.best_model_path.endswith("epoch_001.ckpt")


PUBLISHED = {  # letter: (model config, epochs, classifier input layer, classifier lr), bash/DCGMM-<letter>.bash
    "A": ("flat_gmm", 40, None, 0.01), "B": ("dcgmm2", 25, None, 0.01), "C": ("dcgmm2_pool", 50, 2, 0.05),
    "D": ("dcgmm3_pool", 25, 2, 0.05), "E": ("dcgmm3", 45, 3, 0.05), "F": ("dcgmm4", 30, None, 0.01), "G": ("dcgmm4_pool", 30, 4, 0.05),
}


@pytest.mark.parametrize("letter", sorted(PUBLISHED))
def test_parity_presets_are_the_published_runs(train_cfg, letter):
    model, epochs, reads, lr = PUBLISHED[letter]
    cfg = train_cfg(f"experiment=parity_{letter}")
    assert cfg.data.val_size == 0 and cfg.data.batch_size == 100 and cfg.trainer.max_epochs == epochs
    assert cfg.hydra.runtime.choices.model == model
    layers = cfg.model.layers
    assert all(layer.get("wait", 0.0) == 0.0 for layer in layers)  # the published files never wait
    classifier = layers[-1]
    assert classifier.kind == "classifier" and classifier.input_layer == reads and classifier.lr == lr
    stack = instantiate(cfg.model).stack
    assert stack.classifier.input_layer == (stack.top_gmm.index if reads is None else reads)


@needs_mnist
def test_parity_preset_fast_dev_run_uses_every_training_image(train_cfg):
    cfg = train_cfg("experiment=parity_B", "++trainer.fast_dev_run=true", "logger=csv")
    metrics, objects = train(cfg)
    assert objects["datamodule"].split_sizes()["train"] == 60_000 and objects["datamodule"].split_sizes()["val"] == 0
    assert "test/cluster/nmi" in metrics and "test/acc" in metrics


def test_model_files_share_the_common_header():
    """Every topology file takes the shared header (conf/model/_common.yaml) and repeats none of
    its values: a change of a model-wide default is one edit."""
    import yaml

    common = yaml.safe_load((CONFIG_DIR / "model" / "_common.yaml").read_text())
    for path in sorted((CONFIG_DIR / "model").glob("[!_]*.yaml")):
        own = yaml.safe_load(path.read_text())
        assert own["defaults"] == ["_common", "_self_"], path.name
        repeated = sorted(key for key, value in own.items() if key in common and common[key] == value)
        assert not repeated, f"{path.name} repeats {repeated} of _common.yaml"


def test_a_non_editable_install_finds_its_configs(tmp_path):
    """The configs ship in the wheel (src/dcgmm/conf); imported from an unpacked wheel, away from
    the checkout, dcgmm.app.config composes a task and builds a topology from the package's files."""
    import zipfile

    pytest.importorskip("setuptools", reason="building the wheel needs setuptools in the environment")
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "local"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("dcgmm-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "dcgmm" / "conf" / "train.yaml").is_file() and (site / "dcgmm" / "conf" / "model" / "_common.yaml").is_file()
    code = (
        "import json, dcgmm.app.config as c, dcgmm.app.locations as loc; cfg = c.compose('train', ['model=dcgmm2', 'data=cifar10']);"
        "m = c.build_model('dcgmm2', ['model.layers.1.K=16']);"
        "print(json.dumps([str(loc.CONF_DIR), list(cfg.model.input_shape), m.stack.layers[1].K, str(loc.project_root())]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PROJECT_ROOT", "DCGMM_CONF_DIR")}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**env, "PYTHONPATH": str(site)})
    assert run.returncode == 0, run.stderr[-2000:]
    conf, shape, k, root = json.loads(run.stdout.strip().splitlines()[-1])
    assert conf == str(site / "dcgmm" / "conf") and shape == [3, 32, 32] and k == 16 and root == str(tmp_path)

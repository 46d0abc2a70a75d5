"""Hyper-parameter search (Optuna sweeper, conf/hparams_search/) and launchers (conf/hydra/launcher/)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.plugins.launcher import Launcher
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from dcgmm.app.utils import metric_value, optuna_search_space
from tests.conftest import CONFIG_DIR, ROOT, needs_mnist

# conf/hydra/launcher/joblib.yaml shares its name with the plugin's config on purpose (dcgmm.app.utils filters
# this warning on import, but the filters set while pytest collects are undone for the tests)
pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/joblib' is validated against ConfigStore schema:UserWarning")
SEARCHES = sorted(p.stem for p in (CONFIG_DIR / "hparams_search").glob("*.yaml"))
# a few batches per stage: fast_dev_run would log no val metric for the sweeper to read
TINY = ["trainer.max_epochs=1", "+trainer.limit_train_batches=5", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2", "logger=csv"]


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def sweep_dir(log_dir: Path) -> Path:
    (sweep,) = (log_dir / "train" / "multiruns").iterdir()
    return sweep


def job_dirs(sweep: Path) -> list[str]:
    return sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())


@pytest.mark.parametrize("search", SEARCHES)
def test_every_search_config_composes_with_a_search_space(train_cfg, search):
    cfg = train_cfg(f"hparams_search={search}")
    sweeper = cfg.hydra.sweeper
    assert get_class(sweeper._target_).__name__ == "OptunaSweeper"
    assert cfg.optimized_metric and sweeper.direction in ("minimize", "maximize")
    assert get_class(sweeper.sampler._target_).__name__ == "TPESampler" and sweeper.sampler.seed is not None
    assert sweeper.n_trials >= 1
    assert optuna_search_space(cfg), "no parameter to search"
    # every topology the search may choose exists
    model_choice = (sweeper.params or {}).get("model")
    if model_choice:
        names = model_choice.removeprefix("choice(").removesuffix(")").split(",")
        for name in names:
            assert (CONFIG_DIR / "model" / f"{name.strip()}.yaml").exists(), name


def test_search_space_counts_only_parameters_left_to_search(train_cfg):
    assert optuna_search_space(train_cfg("hparams_search=flat_mnist_optuna")) == ["model.K", "model.lr"]
    # a command-line value fixes a parameter of hydra.sweeper.params
    assert optuna_search_space(train_cfg("hparams_search=flat_mnist_optuna", "model.K=49")) == ["model.lr"]
    assert optuna_search_space(train_cfg("hparams_search=flat_mnist_optuna", "model.K=49", "model.lr=0.02")) == []
    assert optuna_search_space(train_cfg("model=flat_gmm", "model.K=49")) is None  # not an Optuna sweep


def test_metric_value_for_sweepers():
    assert metric_value({"val/loss": 1.5}, "val/loss") == 1.5
    assert metric_value({"val/loss": 1.5}, None) is None
    assert metric_value({"val/loss": math.nan}, "val/loss") is None  # a failed trial, not NaN (optuna 2.10 raises on NaN)
    with pytest.raises(KeyError, match="val/acc"):
        metric_value({"val/loss": 1.5}, "val/acc")


def test_empty_search_space_is_a_one_line_error_before_training(tmp_path):
    result = run_cli("-m", "hparams_search=flat_mnist_optuna", "model=flat_gmm", "model.K=25", "model.lr=0.01", f"paths.log_dir={tmp_path}", "logger=csv")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith("error: the Optuna search space is empty")
    assert not any(tmp_path.iterdir())  # no trial ran


@needs_mnist
def test_optuna_search_two_trials(tmp_path):
    result = run_cli("-m", "hparams_search=flat_mnist_optuna", "hydra.sweeper.n_trials=2", *TINY, f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_dir(tmp_path)
    assert job_dirs(sweep) == ["0", "1"]
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.name == "optuna" and math.isfinite(results.best_value)
    assert set(results.best_params) == {"model.K", "model.lr"}
    assert math.isqrt(results.best_params["model.K"]) ** 2 == results.best_params["model.K"]
    for job in job_dirs(sweep):
        overrides = (sweep / job / ".hydra" / "overrides.yaml").read_text()
        assert "model.K=" in overrides and "model.lr=" in overrides
        assert (sweep / job / "checkpoints" / "last.ckpt").exists()


@needs_mnist
def test_failed_trial_does_not_stop_the_search(tmp_path):
    """A trial whose job fails (here a bad learning rate) is a failed Optuna trial; the others go on."""
    result = run_cli(
        "-m", "hparams_search=flat_mnist_optuna", "hydra/sweeper/sampler=random", "model.lr=choice(-1,0.01)",
        "hydra.sweeper.n_trials=3", *TINY, f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_dir(tmp_path)
    assert job_dirs(sweep) == ["0", "1", "2"]
    lrs = [(sweep / j / ".hydra" / "overrides.yaml").read_text().split("model.lr=")[1].split()[0] for j in job_dirs(sweep)]
    assert "-1" in lrs and "0.01" in lrs  # the seeded sampler draws both
    assert "job failed, the sweep continues" in result.stdout + result.stderr
    assert OmegaConf.load(sweep / "optimization_results.yaml").best_params["model.lr"] == 0.01


@needs_mnist
def test_joblib_launcher_runs_two_jobs(tmp_path):
    result = run_cli("-m", "hydra/launcher=joblib", "model=flat_gmm", "model.K=4,9", *TINY, f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    assert "validated against ConfigStore schema" not in result.stderr
    sweep = sweep_dir(tmp_path)
    assert job_dirs(sweep) == ["0", "1"]
    for job in job_dirs(sweep):
        assert (sweep / job / "checkpoints" / "last.ckpt").exists()
        assert list((sweep / job / "csv").rglob("metrics.csv"))


def test_slurm_launcher_composes(train_cfg):
    cfg = train_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30")
    launcher_cfg = cfg.hydra.launcher
    launcher_cls = get_class(launcher_cfg._target_)
    assert launcher_cls.__name__ == "SlurmLauncher" and issubclass(launcher_cls, Launcher)
    assert launcher_cfg.partition == "gpu" and launcher_cfg.timeout_min == 30
    for key in ("cpus_per_task", "gpus_per_node", "mem_gb", "nodes", "tasks_per_node"):
        assert launcher_cfg[key] is not None, key
    launcher = instantiate(launcher_cfg)  # builds, submits nothing
    assert launcher.params["partition"] == "gpu"


def test_joblib_launcher_composes(train_cfg):
    cfg = train_cfg("hydra/launcher=joblib")
    assert get_class(cfg.hydra.launcher._target_).__name__ == "JoblibLauncher"
    assert cfg.hydra.launcher.n_jobs == 2

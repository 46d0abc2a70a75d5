"""W&B logging: the mode that reaches ``wandb.init`` is the config's (offline by default, online on
request), an online start without credentials or network stops with one line and exit status 2, and
the jobs of a multirun share a group. Nothing here reaches outside the machine: the online runs
point W&B at a closed port on the loopback address and give no credentials."""

import os
import socket
import subprocess
import sys
import time

import pytest
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import open_dict, read_write

from dcgmm.app.loggers import WandbLogger
from dcgmm.errors import ConfigError
from tests.conftest import ROOT, compose_train, needs_mnist


def closed_loopback_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens (a port bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def offline_env(tmp_path, **extra: str) -> dict[str, str]:
    """The environment of a subprocess with no W&B credentials anywhere (no key, no ~/.netrc, no settings file)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"), NETRC=str(tmp_path / "no_netrc"))
    env.update(WANDB_BASE_URL=closed_loopback_url(), **extra)
    return env


@pytest.mark.parametrize(("overrides", "mode"), [([], "offline"), (["logger.wandb.offline=false"], "online"), (["logger=wandb_online"], "online")])
def test_the_mode_that_reaches_wandb_init_is_the_configs(tmp_path, monkeypatch, overrides, mode):
    cfg = compose_train(["logger=wandb", *overrides], tmp_path)
    calls = []

    def fake_init(**kwargs):
        calls.append(kwargs)
        return object()  # Lightning only calls define_metric on a real run

    monkeypatch.setattr(wandb, "init", fake_init)
    opposite = "online" if mode == "offline" else "offline"
    monkeypatch.setenv("WANDB_MODE", opposite)  # a process-wide setting must not decide it
    logger = instantiate(cfg.logger.wandb)
    assert isinstance(logger, WandbLogger)
    _ = logger.experiment
    (kwargs,) = calls
    assert kwargs["mode"] == mode
    assert kwargs["settings"]["x_disable_stats"] is (mode == "offline")  # system metrics when online
    assert kwargs["project"] == "dcgmm" and kwargs["job_type"] == "train"
    assert os.environ["WANDB_MODE"] == opposite  # Lightning's offline branch does not leak into the process


def test_train_evaluate_and_sample_log_to_one_project(tmp_path):
    loggers = {name: compose_train(["logger=wandb"], tmp_path / name, f"{name}.yaml").logger.wandb for name in ("train", "evaluate", "sample")}
    assert {cfg.project for cfg in loggers.values()} == {"dcgmm"}
    assert {cfg._target_ for cfg in loggers.values()} == {"dcgmm.app.loggers.WandbLogger"}
    assert [cfg.job_type for cfg in loggers.values()] == ["train", "eval", "sample"]
    assert all(cfg.offline is True for cfg in loggers.values())


def test_the_jobs_of_a_multirun_share_a_group_and_a_single_run_has_none(tmp_path):
    cfg = compose_train(["logger=wandb"], tmp_path)
    assert instantiate(cfg.logger.wandb)._wandb_init["group"] is None
    with read_write(cfg.hydra), open_dict(cfg.hydra):  # the composed hydra node is read-only
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.job.name = "train"  # what the entry point train.py gives (the compose API says "app")
        cfg.hydra.sweep.dir = str(tmp_path / "multiruns" / "2026-12-06_10-00-00-000000")
    HydraConfig.instance().set_config(cfg)
    groups = {instantiate(cfg.logger.wandb)._wandb_init["group"] for _job in range(2)}
    assert groups == {"train-2026-12-06_10-00-00-000000"}
    with open_dict(cfg):
        cfg.logger.wandb.group = "mine"
    assert instantiate(cfg.logger.wandb)._wandb_init["group"] == "mine"  # an explicit group wins


def test_a_failed_online_start_is_one_config_error(tmp_path, monkeypatch):
    def refuse(**kwargs):
        raise wandb.errors.UsageError("No API key configured.\nUse `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(ConfigError) as caught:
        _ = WandbLogger(offline=False, save_dir=str(tmp_path)).experiment
    message = str(caught.value)
    assert "\n" not in message and "No API key configured. Use `wandb login`" in message
    assert "logger.wandb.offline=true" in message
    with pytest.raises(wandb.errors.UsageError):  # offline, the advice to log in would be wrong: W&B's own error stands
        _ = WandbLogger(offline=True, save_dir=str(tmp_path)).experiment


def run_online(tmp_path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    args = [sys.executable, "train.py", "model=flat_gmm", "model.K=4", f"paths.log_dir={tmp_path / 'logs'}", "logger.wandb.offline=false", "trainer.max_epochs=1"]
    start = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return result, time.perf_counter() - start


def assert_stopped_before_training(result: subprocess.CompletedProcess, tmp_path) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: W&B could not start online"), result.stderr[-2000:]
    assert "wandb login" in errors[0] and "logger.wandb.offline=true" in errors[0]
    assert "Traceback" not in result.stderr
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "train.log").exists()  # what was written stays
    assert not (run_dir / "checkpoints").exists()  # nothing was trained


@needs_mnist
def test_online_without_credentials_stops_with_one_line(tmp_path):
    result, _ = run_online(tmp_path, offline_env(tmp_path))
    assert_stopped_before_training(result, tmp_path)
    assert "API key" in result.stderr


@needs_mnist
def test_online_without_network_stops_within_the_init_timeout(tmp_path):
    timeout = 3
    result, seconds = run_online(tmp_path, offline_env(tmp_path, WANDB_API_KEY="0" * 40, WANDB_INIT_TIMEOUT=str(timeout)))
    assert_stopped_before_training(result, tmp_path)
    assert "127.0.0.1" in result.stderr  # the closed loopback port it tried
    assert seconds < timeout + 30, f"the online start took {seconds:.0f} s with WANDB_INIT_TIMEOUT={timeout}"

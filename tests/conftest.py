"""Shared fixtures: Hydra configs composed with the compose API, outputs redirected to tmp_path."""

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, open_dict

from dcgmm.app.config import compose
from dcgmm.app.utils import prepare_environment

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "conf"
DATA_DIR = ROOT / "data"

prepare_environment()


def dataset_available(name: str) -> bool:
    """True when the dataset's cache exists (made by `make setup` / scripts/fetch_data.sh)."""
    return (DATA_DIR / "cache" / f"{name}.npz").exists()


def needs(*names: str):
    """Skip marker for tests that read the named dataset caches (``needs("mnist", "fashion")``)."""
    missing = [name for name in names if not dataset_available(name)]
    return pytest.mark.skipif(bool(missing), reason=f"dataset cache missing ({', '.join(missing)}): run `make setup`")


needs_mnist = needs("mnist")  # the marker most tests use
needs_both = needs("mnist", "fashion")
# tests (or parameters: pytest.param(..., marks=gpu_only)) that run only on a CUDA GPU; the GPU
# check runs them (`pytest -m gpu`, benchmarks/gpu_check.py's tests stage)
gpu_only = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def compose_train(overrides: list[str], tmp_path: Path, config_name: str = "train.yaml") -> DictConfig:
    """Compose conf/<config_name> like `python train.py OVERRIDES` (dcgmm.app.config.compose, the one
    way every caller composes), writing only below tmp_path."""
    cfg = compose(config_name, overrides, output_dir=tmp_path, root_dir=ROOT, data_dir=DATA_DIR, log_dir=tmp_path)
    with open_dict(cfg):
        cfg.extras.print_config = False
    return cfg


@pytest.fixture
def train_cfg(tmp_path):
    """A function building a composed training config for the given overrides."""
    return lambda *overrides: compose_train(list(overrides), tmp_path)


@pytest.fixture
def sample_cfg(tmp_path):
    """A function building a composed sampling config (conf/sample.yaml) for the given overrides."""
    return lambda *overrides: compose_train(list(overrides), tmp_path, "sample.yaml")

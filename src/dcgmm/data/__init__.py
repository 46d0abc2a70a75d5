"""Data tier: the dataset registry (MNIST, FashionMNIST, CIFAR-10, SVHN), loading, caching and
Lightning data modules.

The data modules (which need torch and lightning) are imported lazily, so that
``dcgmm.data.load_dataset`` and ``python -m dcgmm.data.fetch`` need only numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dcgmm.data.errors import DataError
from dcgmm.data.idx import read_idx, write_idx
from dcgmm.data.sources import (
    DATASETS,
    DatasetInfo,
    SourceUnavailable,
    canonical_name,
    dataset_info,
    load_dataset,
    load_dataset_with_source,
    register_dataset,
)

# the datasets registered outside sources.py (one file each)
from dcgmm.data import cifar, svhn  # noqa: E402, F401  isort: skip

if TYPE_CHECKING:
    from dcgmm.data.datamodule import ArrayDataModule, FashionMNISTDataModule, ImageDataModule, MNISTDataModule, TensorBatchDataset

_LAZY = {"ArrayDataModule", "FashionMNISTDataModule", "ImageDataModule", "MNISTDataModule", "TensorBatchDataset"}

__all__ = [
    "ArrayDataModule",
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "MNISTDataModule",
    "SourceUnavailable",
    "TensorBatchDataset",
    "canonical_name",
    "dataset_info",
    "load_dataset",
    "load_dataset_with_source",
    "read_idx",
    "register_dataset",
    "write_idx",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("dcgmm.data.datamodule"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)

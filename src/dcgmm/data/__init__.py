"""Data tier: MNIST and FashionMNIST loading, caching and Lightning data modules.

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
    SourceUnavailable,
    canonical_name,
    load_dataset,
    load_dataset_with_source,
)

if TYPE_CHECKING:
    from dcgmm.data.datamodule import FashionMNISTDataModule, ImageDataModule, MNISTDataModule, TensorBatchDataset

_LAZY = {"FashionMNISTDataModule", "ImageDataModule", "MNISTDataModule", "TensorBatchDataset"}

__all__ = [
    "DATASETS",
    "DataError",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "MNISTDataModule",
    "SourceUnavailable",
    "TensorBatchDataset",
    "canonical_name",
    "load_dataset",
    "load_dataset_with_source",
    "read_idx",
    "write_idx",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("dcgmm.data.datamodule"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)

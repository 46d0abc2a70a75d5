"""OmegaConf resolvers of the project's configs, registered by :func:`dcgmm.app.utils.prepare_environment`.

* ``${dcgmm.inlier_classes:${outlier.held_out},${outlier.dataset},${data.name}}``: the training
  classes of an outlier run (see :func:`inlier_classes`), so that ``data.classes`` follows
  ``outlier.held_out`` (``conf/outlier/default.yaml``).
* ``${dcgmm.cross_outliers:${data.name}}``: the extra outlier sets of an outlier run: every other
  registered dataset of the same image shape and uniform noise (see :func:`cross_outliers`).
* ``${dcgmm.image_shape:${data.name}}``: ``[C, H, W]`` of a registered dataset, the models'
  ``input_shape`` (see :func:`image_shape`).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from omegaconf import OmegaConf

from dcgmm.data.sources import DATASETS, canonical_name, dataset_info
from dcgmm.errors import ConfigError

__all__ = ["cross_outliers", "held_out_list", "image_shape", "inlier_classes", "register_resolvers"]


def held_out_list(held_out) -> list[int]:
    """``outlier.held_out`` as a list: an int (``outlier.held_out=3``, what a ``-m`` sweep over
    ``0,1,...`` gives), a list (``[3,5]``) or null/empty (nothing held out)."""
    if held_out is None:
        return []
    if isinstance(held_out, (str, bytes)) or not isinstance(held_out, (Sequence, numbers.Integral)):
        raise ConfigError(f"outlier.held_out={held_out!r} must be a class id or a list of class ids, e.g. 0 or [3,5]")
    values = [held_out] if isinstance(held_out, numbers.Integral) else list(held_out)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"outlier.held_out={held_out!r} must hold integer class ids, got {value!r}")
    return [int(v) for v in values]


def inlier_classes(held_out, dataset: str | None, data_name: str) -> list[int] | None:
    """``data.classes`` of an outlier run.

    Cross-dataset (``dataset`` names another dataset than ``data_name``): ``None``, every class
    is an inlier. Otherwise every class id of the dataset but the held-out ones. Never raises (an
    error inside a resolver reaches the user as a multi-line OmegaConf error): bad values are
    reported, one line each, by :class:`dcgmm.app.callbacks.OutlierDetection` before training.
    """
    try:
        name = canonical_name(data_name)
        if dataset is not None and canonical_name(dataset) != name:
            return None
        held = set(held_out_list(held_out))
        return [c for c in range(len(dataset_info(name).class_names)) if c not in held]
    except ValueError:
        return None


def cross_outliers(data_name: str) -> list[str]:
    """Extra outlier sets for a model trained on ``data_name``: the other registered datasets of the
    same image shape, then ``"noise"`` (uniform-noise images). Never raises (see
    :func:`inlier_classes`)."""
    try:
        name = canonical_name(data_name)
    except ValueError:
        return ["noise"]
    shape = DATASETS[name].image_shape
    return [other for other, info in DATASETS.items() if other != name and info.image_shape == shape] + ["noise"]


def image_shape(data_name) -> list[int]:
    """``[C, H, W]`` of the registered dataset ``data_name``; ``[1, 28, 28]`` when the name is not
    registered (the data module then reports the unknown name in one line before training)."""
    try:
        return list(dataset_info(str(data_name)).image_shape)
    except ValueError:
        return [1, 28, 28]


def register_resolvers() -> None:
    """Register the project's resolvers with OmegaConf (idempotent)."""
    if not OmegaConf.has_resolver("dcgmm.inlier_classes"):
        OmegaConf.register_new_resolver("dcgmm.inlier_classes", inlier_classes)
    if not OmegaConf.has_resolver("dcgmm.cross_outliers"):
        OmegaConf.register_new_resolver("dcgmm.cross_outliers", cross_outliers)
    if not OmegaConf.has_resolver("dcgmm.image_shape"):
        OmegaConf.register_new_resolver("dcgmm.image_shape", image_shape)

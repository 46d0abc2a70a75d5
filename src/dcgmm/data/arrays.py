"""Images and labels given as tensors or arrays, checked and converted (one-line errors).

Used by :class:`dcgmm.app.api.DCGMMEstimator` for everything it is handed: images ``(N, C, H, W)``,
``(N, H, W)`` (one channel) or ``(N, C*H*W)`` as ``uint8`` pixels (divided by 255), booleans or
floats in ``[0, 1]``; labels as one integer class id per image.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from dcgmm.errors import ConfigError


def is_int(value) -> bool:
    """True for Python/numpy integers, False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value, what: str) -> int:
    """``value`` as a positive int, or a one-line ConfigError naming ``what``."""
    if not is_int(value) or int(value) < 1:
        raise ConfigError(f"{what}={value!r} must be a positive integer")
    return int(value)


def as_images(X, input_shape: Sequence[int], what: str = "X") -> torch.Tensor:
    """``X`` as float32 images ``(N, C, H, W)`` in ``[0, 1]`` on the CPU, for a model whose images
    have shape ``input_shape = (C, H, W)``."""
    if isinstance(X, (L.LightningDataModule, DataLoader)):
        raise ConfigError(f"{what} must be images (a tensor or array); a {type(X).__name__} is accepted by fit() only")
    if isinstance(X, torch.Tensor):
        tensor = X.detach().cpu()
    else:
        try:
            array = np.asarray(X)
        except Exception:  # noqa: BLE001
            raise ConfigError(f"{what} of type {type(X).__name__} is not an array of images") from None
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise ConfigError(f"{what} has dtype {array.dtype}; pass uint8 pixels or floats in [0, 1]")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    channels, height, width = (int(v) for v in input_shape)
    dims = channels * height * width
    shape = tuple(tensor.shape)
    if len(shape) == 4 and shape[1:] == (channels, height, width):
        pass
    elif len(shape) == 3 and channels == 1 and shape[1:] == (height, width):
        tensor = tensor.unsqueeze(1)
    elif len(shape) == 2 and shape[1] == dims:
        tensor = tensor.reshape(shape[0], channels, height, width)
    else:
        accepted = f"(N, {channels}, {height}, {width})" + (f", (N, {height}, {width})" if channels == 1 else "") + f" or (N, {dims})"
        raise ConfigError(f"{what} has shape {shape}; the model takes images of shape {accepted} (input_shape={[channels, height, width]})")
    if tensor.dtype == torch.uint8:
        return tensor.to(torch.float32).div_(255.0)
    if tensor.dtype == torch.bool:
        return tensor.to(torch.float32)
    if tensor.is_complex():
        raise ConfigError(f"{what} has dtype {tensor.dtype}; pass uint8 pixels or floats in [0, 1]")
    if tensor.numel():
        low, high = float(tensor.min()), float(tensor.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ConfigError(f"{what} holds NaN or infinite values")
        if low < -1e-6 or high > 1 + 1e-6:
            kind = "integer" if not tensor.is_floating_point() else "float"
            hint = "pass uint8 pixels (0..255) or floats divided by 255" if high <= 255 and low >= 0 else "rescale to [0, 1]"
            raise ConfigError(f"{what} has {kind} values in [{low:g}, {high:g}], outside [0, 1]; {hint}")
    return tensor.to(torch.float32).clamp_(0.0, 1.0)


def as_labels(y, n: int, num_classes: int | None = None) -> torch.Tensor:
    """``y`` as int64 class ids ``(n,)`` (in ``0..num_classes-1`` when given)."""
    try:
        labels = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y))
    except Exception:  # noqa: BLE001
        raise ConfigError(f"y of type {type(y).__name__} is not an array of class ids") from None
    if labels.dim() != 1 or len(labels) != n:
        raise ConfigError(f"y has shape {tuple(labels.shape)}; give one class id per image, shape ({n},)")
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise ConfigError("y must hold integer class ids, got fractional values")
    elif labels.dtype == torch.bool or labels.is_complex():
        raise ConfigError(f"y must hold integer class ids, got dtype {labels.dtype}")
    labels = labels.to(torch.long)
    if num_classes is not None and n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(f"y holds class ids {int(labels.min())}..{int(labels.max())}; the classifier has classes 0..{num_classes - 1}")
    return labels

"""Image grids as uint8 arrays and PNG files (a few lines instead of a torchvision dependency)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0, normalize: bool = False) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` (values in ``[0, 1]``, C = 1 or 3) into one ``uint8`` array.

    Args:
        nrow: images per row (default: about sqrt(N)).
        normalize: rescale each image to ``[0, 1]`` by its own min and max first (for maps whose
            values are not intensities, e.g. variances).
    Returns:
        ``(H_grid, W_grid)`` for one channel, ``(H_grid, W_grid, 3)`` for three.
    """
    images = images.detach().float().cpu()
    if images.dim() == 3:
        images = images.unsqueeze(1)
    n, c, h, w = images.shape
    if normalize:
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        images = (images - low) / (high - low).clamp_min(1e-12)
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8)
    return array[0].numpy() if c == 1 else array.permute(1, 2, 0).numpy()


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a ``uint8`` image array to ``path`` (folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path

"""The interface every DCGMM layer shares.

A layer maps a batch of feature maps bottom-up, ``(N, C_in, H, W) -> (N, C_out, H', W')``,
and maps a top-down signal back, ``(N, C_out, H', W') -> (N, C_in, H, W)``, for sampling.
Layers that learn (GMM, classifier) also expose a loss. Shapes are inferred at construction
from the input shape, so a stack can be checked and summarised before any data is seen.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from dcgmm.errors import ConfigError

Shape = tuple[int, int, int]  # (channels, height, width) of one image or feature map


def require_positive_int(value, name: str, where: str) -> int:
    """Return ``value`` as int, or raise a one-line ConfigError naming ``where.name``."""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ConfigError(f"{where}: {name}={value!r} must be a positive integer")
    if int(value) < 1:
        raise ConfigError(f"{where}: {name}={value} must be >= 1")
    return int(value)


def pair(value, name: str, where: str) -> tuple[int, int]:
    """Accept ``k`` or ``[kh, kw]`` and return ``(kh, kw)`` as positive ints."""
    if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, str):
        items = list(value)
        if len(items) != 2:
            raise ConfigError(f"{where}: {name}={items} must be one integer or a pair [h, w]")
        return require_positive_int(items[0], name, where), require_positive_int(items[1], name, where)
    v = require_positive_int(value, name, where)
    return v, v


class Layer(nn.Module):
    """Base class: shape bookkeeping and the bottom-up / top-down contract.

    Attributes:
        in_shape: ``(C_in, H, W)`` of the input map (one image, no batch dimension).
        out_shape: ``(C_out, H', W')`` of the output map.
        index: position of the layer in its stack (for names in logs and errors).
    """

    kind: ClassVar[str] = "layer"
    has_loss: ClassVar[bool] = False  # True for layers that learn (GMM, classifier)

    def __init__(self, in_shape: Shape, index: int = 0) -> None:
        super().__init__()
        self.in_shape: Shape = tuple(int(v) for v in in_shape)  # type: ignore[assignment]
        self.index = int(index)
        self.out_shape: Shape = self.in_shape

    @property
    def name(self) -> str:
        """Short unique name, e.g. ``L1_gmm``, used in metric names and messages."""
        return f"L{self.index}_{self.kind}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, *in_shape) -> (N, *out_shape)
        raise NotImplementedError

    def top_down(self, signal: torch.Tensor, **options) -> torch.Tensor:
        """Map a top-down signal ``(N, *out_shape)`` to this layer's input space ``(N, *in_shape)``."""
        raise NotImplementedError(f"{type(self).__name__} has no top-down pass")

    def flops_per_image(self) -> int:
        """Multiply-adds of one bottom-up pass for one image (for the stack summary)."""
        return 0

    def constrain_(self) -> None:
        """Project parameters back onto their allowed set after an optimiser step."""

    def extra_repr(self) -> str:
        return f"in={self.in_shape}, out={self.out_shape}"

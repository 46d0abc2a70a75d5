"""Folding layer: a convolution without weights (im2col), docs/design.md section 1.1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dcgmm.core.layers.base import Layer, Shape, TopDownContext, pair
from dcgmm.errors import ConfigError


class Folding(Layer):
    """Gathers every ``kh x kw`` patch (stride ``sh, sw``, no padding) into the channel axis.

    Bottom-up: ``(N, C, H, W) -> (N, kh*kw*C, H', W')`` with ``H' = (H - kh) // sh + 1`` and
    ``W' = (W - kw) // sw + 1``. Inside a patch the channel order is ``(i, j, c)`` (patch row,
    patch column, channel): pixel-major, so that a folding over the whole input of a GMM layer's
    output is a view of it.

    Memory layout: outputs are "channels last" (a ``(N, H', W', D)`` buffer seen as
    ``(N, D, H', W')``), which is the layout the GMM layer's matrix products read, so no
    transposing copy is needed between the two.

    Top-down: every patch is scattered back onto its pixels and each pixel is divided by the
    number of patches covering it, so overlapping patches are averaged. Pixels covered by no
    patch (when the stride skips them) are 0.

    A kernel equal to the whole input turns an image into one vector: a flat GMM is a
    one-layer DCGMM on top of such a folding.
    """

    kind = "folding"
    sharpenable = True

    def __init__(self, in_shape: Shape, kernel_size=None, stride=1, index: int = 0) -> None:
        super().__init__(in_shape, index)
        where = f"layer {index} (folding)"
        channels, height, width = self.in_shape
        if kernel_size is None:  # default: the whole input, i.e. one vector per image
            kernel_size = (height, width)
        self.kernel_size = pair(kernel_size, "kernel_size", where)
        self.stride = pair(stride, "stride", where)
        kh, kw = self.kernel_size
        if kh > height or kw > width:
            raise ConfigError(
                f"{where}: kernel_size={list(self.kernel_size)} is larger than its input "
                f"{height}x{width}; use a kernel of at most [{height}, {width}]"
            )
        sh, sw = self.stride
        self.out_shape = (kh * kw * channels, (height - kh) // sh + 1, (width - kw) // sw + 1)
        self._whole_input = (kh, kw) == (height, width)
        # How many patches cover each input pixel: (1, 1, H, W), used to average in top_down.
        ones = torch.ones(1, channels * kh * kw, self.out_shape[1] * self.out_shape[2])
        coverage = F.fold(ones, (height, width), self.kernel_size, stride=self.stride)[:, :1]
        self.register_buffer("coverage", coverage, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, kh*kw*C, H', W')``, channels-last memory."""
        n = x.shape[0]
        dim, out_h, out_w = self.out_shape
        if self._whole_input:  # one patch: (N, H, W, C) flattened; a view for channels-last input
            return x.permute(0, 2, 3, 1).reshape(n, dim, 1, 1)
        # Strided views instead of F.unfold, whose CPU im2col is ~100x slower for some
        # kernel/stride pairs (8x8 stride 2 on 28x28: 290 ms vs 2 ms for 100 images).
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        windows = x.unfold(2, kh, sh).unfold(3, kw, sw)  # (N, C, H', W', kh, kw), a view
        patches = windows.permute(0, 2, 3, 4, 5, 1).reshape(n, out_h, out_w, dim)  # (N, H', W', kh*kw*C)
        return patches.permute(0, 3, 1, 2)  # (N, D, H', W') view, channels last

    @property
    def patches_overlap(self) -> bool:
        """True when neighbouring patches share pixels (stride < kernel along an axis with >1 patch)."""
        _, out_h, out_w = self.out_shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return (out_h > 1 and sh < kh) or (out_w > 1 and sw < kw)

    def top_down(self, signal: torch.Tensor, context: TopDownContext | None = None) -> torch.Tensor:
        """Average overlapping patches: ``(N, kh*kw*C, H', W') -> (N, C, H, W)``."""
        n = signal.shape[0]
        channels, height, width = self.in_shape
        (kh, kw) = self.kernel_size
        if self._whole_input:
            return signal.reshape(n, height, width, channels).permute(0, 3, 1, 2)
        # (N, D, H', W') with D in (i, j, c) order -> F.fold's (c, i, j) order
        patches = signal.reshape(n, kh, kw, channels, -1).permute(0, 3, 1, 2, 4).reshape(n, channels * kh * kw, -1)
        summed = F.fold(patches, (height, width), self.kernel_size, stride=self.stride)
        return summed / self.coverage.clamp_min(1.0)  # pixels no patch covers stay 0

    def extra_repr(self) -> str:
        return f"kernel={self.kernel_size}, stride={self.stride}, " + super().extra_repr()

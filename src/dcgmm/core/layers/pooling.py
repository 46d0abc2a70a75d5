"""Max-pooling layer over the responsibility channels (docs/design.md section 1.3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dcgmm.core.layers.base import Layer, Shape, TopDownContext, pair
from dcgmm.errors import ConfigError

TOP_DOWN_MODES = ("dense", "sparse")


class MaxPooling(Layer):
    """Channel-wise max pooling, ``(N, C, H, W) -> (N, C, H', W')``.

    ``H' = 1 + ceil((H - kh) / sh)`` (likewise ``W'``): when the windows do not tile the input
    exactly, the last window hangs over the edge and takes the max of the pixels it does cover
    (the input is padded with ``-inf``). Kernel and stride are set per axis; the reference code
    reads both kernel sizes from one flag, which is not copied here.

    Top-down: ``"dense"`` copies each pooled value to every input position of its window
    (positions in several windows take the mean of those windows' values, positions in none
    get 0); ``"sparse"`` keeps it at one random position of its window and sets the others to 0
    (needs ``stride == kernel``).
    """

    kind = "pooling"

    def __init__(self, in_shape: Shape, kernel_size=2, stride=None, top_down_mode: str = "dense", index: int = 0) -> None:
        super().__init__(in_shape, index)
        where = f"layer {index} (pooling)"
        self.kernel_size = pair(kernel_size, "kernel_size", where)
        self.stride = pair(self.kernel_size if stride is None else stride, "stride", where)
        channels, height, width = self.in_shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        if kh > height or kw > width:
            raise ConfigError(
                f"{where}: kernel_size={list(self.kernel_size)} is larger than its input {height}x{width}; "
                f"use a kernel of at most [{height}, {width}]"
            )
        if top_down_mode not in TOP_DOWN_MODES:
            raise ConfigError(f"{where}: top_down_mode={top_down_mode!r} is unknown; use one of {list(TOP_DOWN_MODES)}")
        if top_down_mode == "sparse" and self.kernel_size != self.stride:
            raise ConfigError(f"{where}: top_down_mode=sparse needs stride == kernel_size (non-overlapping windows)")
        self.top_down_mode = top_down_mode
        out_h = 1 + math.ceil((height - kh) / sh)
        out_w = 1 + math.ceil((width - kw) / sw)
        self.out_shape = (channels, out_h, out_w)
        # input size the windows span, edge overhang included: (H_pad, W_pad) >= (H, W)
        self.padded_size = ((out_h - 1) * sh + kh, (out_w - 1) * sw + kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H', W')``."""
        pad_h, pad_w = self.padded_size[0] - x.shape[-2], self.padded_size[1] - x.shape[-1]
        if pad_h or pad_w:  # right/bottom overhang of the last windows: -inf never wins a max
            x = F.pad(x, (0, pad_w, 0, pad_h), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def _scatter(self, values: torch.Tensor) -> torch.Tensor:
        """Sum ``values (N, C*kh*kw, H'*W')`` of every window position back onto the padded input."""
        return F.fold(values, self.padded_size, self.kernel_size, stride=self.stride)

    def top_down(self, signal: torch.Tensor, context: TopDownContext | None = None) -> torch.Tensor:
        """``(N, C, H', W') -> (N, C, H, W)`` by the dense or sparse rule (see class docstring);
        ``context.pooling_mode`` overrides the layer's own ``top_down_mode``."""
        context = context or TopDownContext()
        self.check_top_down(context)
        mode, generator = context.pooling_mode or self.top_down_mode, context.generator
        n, channels, out_h, out_w = signal.shape
        _, height, width = self.in_shape
        kk = self.kernel_size[0] * self.kernel_size[1]
        per_window = signal.reshape(n, channels, 1, out_h * out_w).expand(n, channels, kk, out_h * out_w)
        if mode == "sparse":
            choice = torch.randint(kk, (n, channels, 1, out_h * out_w), generator=generator, device=signal.device)
            keep = torch.arange(kk, device=signal.device).view(1, 1, kk, 1) == choice  # one position per window
            per_window = per_window * keep
        summed = self._scatter(per_window.reshape(n, channels * kk, out_h * out_w))  # (N, C, H_pad, W_pad)
        if mode == "dense":
            ones = torch.ones(1, kk, out_h * out_w, device=signal.device, dtype=signal.dtype)
            summed = summed / self._scatter(ones).clamp_min(1.0)  # mean over overlapping windows
        return summed[..., :height, :width]

    def check_top_down(self, context: TopDownContext) -> None:
        mode = context.pooling_mode or self.top_down_mode
        if mode not in TOP_DOWN_MODES:
            raise ConfigError(f"pooling_mode={mode!r} is unknown; use dense or sparse")

    def extra_repr(self) -> str:
        return f"kernel={self.kernel_size}, stride={self.stride}, " + super().extra_repr()

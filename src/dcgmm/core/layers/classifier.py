"""Linear classifier layer (docs/design.md section 1.4): an optional top that reads any lower layer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dcgmm.core.layers.base import Layer, Shape, TopDownContext, require_positive_int
from dcgmm.errors import ConfigError


class LinearClassifier(Layer):
    """Softmax regression on the flattened output map of a chosen lower layer.

    Bottom-up: ``(N, C, H, W) -> (N, num_classes)`` logits ``W . flatten(x) + b``. It learns at the
    same time as the GMM layers on a detached input, so it never sends gradients into them.

    Top-down (class-conditional sampling): a target class distribution ``T (N, num_classes)`` is
    mapped back to the input space as ``(log T - b) @ W``, shifted so that its minimum is 0; the
    result ``(N, C, H, W)`` is a non-negative prior for the layer it reads.

    Args:
        in_shape: output shape of the layer it reads (resolved by the stack).
        num_classes: number of classes.
        input_layer: index of the layer it reads (``None``: the top GMM layer below it).

    Its learning rate (plain SGD; the published files: 0.01) is a training setting of its spec
    (``lr``), kept by the training module (:mod:`dcgmm.training.policy`).
    """

    kind = "classifier"
    learns = True
    needs_labels = True
    is_last = True

    def __init__(self, in_shape: Shape, num_classes: int = 10, input_layer: int | None = None, index: int = 0) -> None:
        super().__init__(in_shape, index)
        where = f"layer {index} (classifier)"
        self.num_classes = require_positive_int(num_classes, "num_classes", where)
        if input_layer is not None:
            self.input_layer = int(input_layer)
        self.out_shape = (self.num_classes, 1, 1)
        fan_in = math.prod(self.in_shape)
        # truncated normal, std 1/sqrt(fan_in), redrawn beyond 2 std (as the authors' code)
        std = 1.0 / math.sqrt(fan_in)
        self.weight = nn.Parameter(nn.init.trunc_normal_(torch.empty(self.num_classes, fan_in), std=std, a=-2 * std, b=2 * std))  # (classes, C*H*W)
        self.bias = nn.Parameter(torch.zeros(self.num_classes))  # (classes,)

    @classmethod
    def default_input(cls, index: int, below: Sequence[Layer]) -> int:
        """The top density (GMM) layer below it."""
        density = [layer.index for layer in below if layer.is_density]
        if not density:
            raise ConfigError(f"layer {index} (classifier): there is no gmm layer below it to read")
        return density[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of the input map ``(N, C, H, W)``."""
        return F.linear(x.flatten(1), self.weight, self.bias)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean softmax cross-entropy in nats."""
        if labels is None:
            raise ValueError(f"{self.name}: the classifier loss needs labels")
        return F.cross_entropy(logits, labels)

    def target_distribution(self, classes: torch.Tensor, confidence: float = 0.95) -> torch.Tensor:
        """``T (N, num_classes)``: ``confidence`` on each wanted class, the rest spread evenly."""
        rest = (1.0 - confidence) / max(self.num_classes - 1, 1)
        target = torch.full((len(classes), self.num_classes), rest, device=self.weight.device)
        target[torch.arange(len(classes)), classes] = confidence
        return target

    def top_down(self, signal: torch.Tensor, context: TopDownContext | None = None) -> torch.Tensor:
        """Target class distribution ``(N, num_classes)`` -> non-negative prior ``(N, C, H, W)``."""
        target = signal.reshape(signal.shape[0], self.num_classes)
        prior = (torch.log(target) - self.bias.detach()) @ self.weight.detach()  # (N, C*H*W)
        prior = prior - prior.min(dim=1, keepdim=True).values
        return prior.reshape(signal.shape[0], *self.in_shape)

    def macs_per_image(self) -> int:
        return self.num_classes * math.prod(self.in_shape)

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, reads=L{self.input_layer}, " + super().extra_repr()

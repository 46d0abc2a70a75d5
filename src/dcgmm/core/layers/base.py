"""The contract every DCGMM layer fulfils (:class:`Layer`) and the context of a top-down pass.

A layer maps a batch of feature maps bottom-up, ``(N, C_in, H, W) -> (N, C_out, H', W')``,
and maps a top-down signal back, ``(N, C_out, H', W') -> (N, C_in, H, W)``, for sampling.
Layers that learn (GMM, classifier) also expose a loss. Shapes are inferred at construction
from the input shape, so a stack can be checked and summarised before any data is seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


# what the layer where a top-down pass starts draws its components from (TopDownContext.top)
TOP_DRAWS = ("weights", "uniform", "cycle")


@dataclass
class TopDownContext:
    """What the top-down pass tells every layer it passes through (docs/design.md section 3).

    Attributes:
        n: number of samples to draw where the pass starts without a signal (``signal=None``).
        top_s: a GMM layer draws among the ``top_s`` largest entries of a prior from above.
        divisor: GMM standard deviations are divided by this (> 0).
        top: what the layer where the pass starts (``signal=None``) draws its components from:
            ``"weights"`` (its learned mixture weights), ``"uniform"`` (uniformly over its K
            components, as the authors' code does) or ``"cycle"`` (sample ``i`` takes component
            ``i mod K``, the authors' ``sampling_I -2``).
        pooling_mode: ``"dense"`` or ``"sparse"`` top-down of pooling layers (``None``: each
            layer's own setting).
        generator: torch random generator for reproducible draws.
    """

    n: int | None = None
    top_s: int = 1
    divisor: float = 1.0
    top: str = "weights"
    pooling_mode: str | None = None
    generator: torch.Generator | None = None


class Layer(nn.Module):
    """Base class: shape bookkeeping and the contract every layer kind fulfils.

    The stack (:class:`dcgmm.core.model.DCGMM`), the training module and the sampler only use what is
    declared here, so a new layer kind is one file plus one :func:`dcgmm.core.layers.register_layer`
    line (docs/design.md section 9, "where do I add...").

    Bottom-up (:meth:`bottom_up`): the layer reads the output map of layer :attr:`input_layer`
    (by default the layer right below it; ``-1`` is the image) and returns its raw output (what
    its loss and the evaluation read: log-scores of a GMM layer, logits of a classifier; ``None``
    for a layer without one) and the map it passes up.

    Learning (:attr:`learns`): :meth:`loss` of the raw output and :meth:`parameter_groups` for the
    optimiser. A learning layer reads a detached input when trained, so it receives the gradient
    of its own loss only. How it learns (learning rate, group factors, wait, annealing) is not the
    layer's: the training module keeps it (:mod:`dcgmm.training.policy`, :class:`dcgmm.training.annealing.Annealing`).
    A layer whose objective is smoothed over its components (:attr:`annealable`) takes the
    smoothing width from the annealing component through :meth:`set_sigma`.

    Top-down (:meth:`top_down`): maps a signal in its output space back to the space of the layer
    it reads, given one :class:`TopDownContext`.

    Attributes:
        in_shape: ``(C_in, H, W)`` of the input map (one image, no batch dimension).
        out_shape: ``(C_out, H', W')`` of the output map.
        index: position of the layer in its stack (for names in logs and errors).
        input_layer: index of the layer whose output this layer reads (``-1``: the image).
    """

    kind: ClassVar[str] = "layer"
    learns: ClassVar[bool] = False  # has a loss and parameters the optimiser updates
    needs_labels: ClassVar[bool] = False  # its loss reads class labels (a classifier)
    is_density: ClassVar[bool] = False  # raw output are per-component log-scores with an objective (a GMM layer)
    is_last: ClassVar[bool] = False  # must be the top of its stack (a classifier)
    sharpenable: ClassVar[bool] = False  # sharpening may run below it (a folding: its top-down averages patches)
    annealable: ClassVar[bool] = False  # its objective is smoothed with a width sigma (set_sigma)
    model_defaults: ClassVar[tuple[str, ...]] = ()  # model-wide settings (model.K, model.mode, ...) that a spec may leave unset

    def __init__(self, in_shape: Shape, index: int = 0) -> None:
        super().__init__()
        self.in_shape: Shape = tuple(int(v) for v in in_shape)  # type: ignore[assignment]
        self.index = int(index)
        self.input_layer = self.index - 1
        self.out_shape: Shape = self.in_shape

    @classmethod
    def default_input(cls, index: int, below: Sequence[Layer]) -> int:
        """Index of the layer it reads when its spec sets no ``input_layer`` (``-1``: the image)."""
        return index - 1

    @property
    def name(self) -> str:
        """Short unique name, e.g. ``L1_gmm``, used in metric names and messages."""
        return f"L{self.index}_{self.kind}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, *in_shape) -> (N, *out_shape)
        raise NotImplementedError

    def bottom_up(self, x: torch.Tensor, detach: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(raw output or None, output map (N, *out_shape))`` of the input map ``(N, *in_shape)``.

        ``detach=True`` (training): a learning layer reads ``x`` detached and passes up a map that
        carries no gradient into its parameters; ``False`` keeps the graph (sharpening)."""
        if self.learns:
            out = self(x.detach() if detach else x)
            return out, out.detach() if detach else out
        return None, self(x)

    def absorbs(self, below: Layer) -> bool:
        """True when this layer computes its raw output from ``below``'s input directly
        (:meth:`bottom_up_through`), so that ``below`` need not run (e.g. a shared GMM over a
        folding's patches as convolutions, docs/design.md section 6)."""
        return False

    def bottom_up_through(self, x: torch.Tensor, below: Layer, detach: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """:meth:`bottom_up` of ``below(x)`` from ``below``'s input ``x`` (only when :meth:`absorbs`)."""
        return self.bottom_up(below(x), detach)

    def loss(self, raw: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar to minimise from the raw output (only for layers that learn)."""
        raise NotImplementedError(f"{type(self).__name__} does not learn")

    def parameter_groups(self) -> list[tuple[str, list[nn.Parameter], float]]:
        """``(name, parameters, learning-rate factor)`` groups for the optimiser. The factor is the
        layer's own (structural, e.g. per-position parameters); the training policy multiplies it
        by the group's configured factor (:class:`dcgmm.training.policy.LayerTraining`)."""
        return [("weights", list(self.parameters()), 1.0)] if self.learns else []

    def set_sigma(self, sigma: float | None) -> None:
        """Take the annealing width ``sigma`` of its smoothed objective (only :attr:`annealable` layers)."""
        raise NotImplementedError(f"{type(self).__name__} has no annealed objective")

    def top_down(self, signal: torch.Tensor | None, context: TopDownContext | None = None) -> torch.Tensor:
        """Map a top-down signal ``(N, *out_shape)`` to the output space of the layer it reads."""
        raise NotImplementedError(f"{type(self).__name__} has no top-down pass")

    def check_top_down(self, context: TopDownContext) -> None:
        """Raise a one-line ConfigError if this layer cannot run top-down with ``context``."""

    def macs_per_image(self) -> int:
        """Multiply-adds of one bottom-up pass for one image (for the stack summary)."""
        return 0

    def constrain_(self) -> None:
        """Project parameters back onto their allowed set after an optimiser step."""

    def extra_repr(self) -> str:
        return f"in={self.in_shape}, out={self.out_shape}"

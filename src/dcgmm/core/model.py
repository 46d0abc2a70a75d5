"""The DCGMM stack: layers built from a topology (a list of layer specs), shapes inferred bottom-up.

A topology is a list of dicts, each with a ``kind`` (see :data:`dcgmm.core.layers.LAYER_KINDS`) and
that layer's parameters, e.g. the flat GMM::

    [{"kind": "folding", "kernel_size": 28}, {"kind": "gmm", "K": 25}]

Layers take unset parameters from ``defaults`` (the model-wide ``K``, ``lr``, ...; each kind
lists the ones it takes in ``model_defaults``), so a model-wide override reaches every layer that
does not set the value itself.

Training is layer-local (docs/design.md section 2): each GMM layer sees a detached input, so one backward
pass of the summed losses gives every layer exactly the gradient of its own loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from dcgmm.core.layers import LAYER_KINDS, GMMLayer, Layer, LinearClassifier, Shape
from dcgmm.core.typecheck import check_arguments
from dcgmm.errors import ConfigError


def build_layers(specs: Sequence[Mapping], input_shape: Shape, defaults: Mapping | None = None) -> list[Layer]:
    """Instantiate layers bottom-up, each from the output shape of the layer it reads.

    ``defaults`` holds model-wide values (``K``, ``lr``, ...); a layer takes those its class lists
    in ``model_defaults`` when its spec leaves them unset. A spec may name the layer it reads
    (``input_layer``, default: the kind's :meth:`~dcgmm.core.layers.Layer.default_input`).

    Raises a one-line :class:`ConfigError` for an empty list, an unknown kind, a missing or
    unknown parameter, or shapes that do not fit.
    """
    if specs is None or len(specs) == 0:
        raise ConfigError("the model has no layers: give model.layers as a list such as [{kind: folding, kernel_size: 28}, {kind: gmm, K: 25}]")
    image: Shape = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
    if len(image) != 3 or min(image) < 1:
        raise ConfigError(f"input_shape={list(input_shape)} must be [channels, height, width] with positive sizes")
    layers: list[Layer] = []
    for index, spec in enumerate(specs):
        if layers and layers[-1].is_last:
            raise ConfigError(f"layer {index}: the {layers[-1].kind} (layer {index - 1}) must be the last layer of the topology")
        if not isinstance(spec, Mapping) or "kind" not in spec:
            raise ConfigError(f"layer {index}: {spec!r} needs a 'kind' (one of {sorted(LAYER_KINDS)})")
        params = dict(spec)
        kind = params.pop("kind")
        if kind not in LAYER_KINDS:
            raise ConfigError(f"layer {index}: kind={kind!r} is unknown; known kinds: {', '.join(sorted(LAYER_KINDS))}")
        cls = LAYER_KINDS[kind]
        for key in cls.model_defaults:
            if (defaults or {}).get(key) is not None:
                params.setdefault(key, defaults[key])
        source = params.pop("input_layer", None)
        if source is None:
            source = cls.default_input(index, layers)
        if isinstance(source, bool) or not isinstance(source, int) or not -1 <= source < index:
            density = [layer.index for layer in layers if layer.is_density]
            raise ConfigError(
                f"layer {index} ({kind}): input_layer={source} does not exist below it; "
                f"use a layer index from 0 to {index - 1} (gmm layers: {density})"
            )
        shape = image if source < 0 else layers[source].out_shape
        check_arguments(cls, params, f"layer {index} ({kind}): ")
        try:
            layer = cls(shape, index=index, **params)
        except TypeError as err:  # unknown or missing keyword
            raise ConfigError(f"layer {index} ({kind}): {err}".replace(f"{cls.__name__}.__init__() ", "")) from None
        layer.input_layer = source  # what the stack feeds it bottom-up and hands its top-down output to
        layers.append(layer)
    return layers


class DCGMM(nn.Module):
    """A stack of DCGMM layers.

    Args:
        layers: topology, a list of layer specs (see module docstring).
        input_shape: ``(C, H, W)`` of the images, e.g. ``(1, 28, 28)``.
        defaults: model-wide values for the layer parameters a spec leaves unset (see
            :func:`build_layers`).
    """

    def __init__(self, layers: Sequence[Mapping], input_shape: Shape = (1, 28, 28), defaults: Mapping | None = None):
        super().__init__()
        self.input_shape: Shape = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
        self.layers = nn.ModuleList(build_layers(layers, self.input_shape, defaults))
        if not self.gmm_layers:
            raise ConfigError("the topology has no gmm layer; add at least one {kind: gmm}")
        # layers that need not run because the one layer reading them computes its output from
        # their input (a folding below a shared GMM: convolutions, no patch copy, docs/design.md
        # section 6), mapped to that reader
        readers: dict[int, list[Layer]] = {}
        for layer in self.layers:
            readers.setdefault(layer.input_layer, []).append(layer)
        self.absorbed: dict[int, int] = {
            index: only[0].index for index, only in readers.items()
            if index >= 0 and len(only) == 1 and only[0].absorbs(self.layers[index])
        }

    @property
    def gmm_layers(self) -> list[Layer]:
        """The density layers (GMM layers), bottom to top."""
        return [layer for layer in self.layers if layer.is_density]

    @property
    def top_gmm(self) -> GMMLayer:
        return self.gmm_layers[-1]

    @property
    def classifier(self) -> LinearClassifier | None:
        """The top layer when it is one whose loss reads labels, else None."""
        last = self.layers[-1]
        return last if last.needs_labels else None

    @property
    def learning_layers(self) -> list[Layer]:
        """Layers with a loss (GMM layers and the classifier), bottom to top."""
        return [layer for layer in self.layers if layer.learns]

    def bottom_up(
        self, x: torch.Tensor, until: int | None = None, start: int = 0, detach: bool = True
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run layers ``start..until`` (inclusive) bottom-up on ``x``, the input map of layer ``start``.

        Each layer reads the output map of its ``input_layer`` through its
        :meth:`~dcgmm.core.layers.Layer.bottom_up`. For training every learning layer reads a detached
        input, so gradients stay inside the layer. ``detach=False`` keeps the graph through the
        whole pass (used by sharpening, which needs the gradient of a higher layer's objective
        with respect to an input map).

        Returns:
            the output map of the last layer run, and ``{layer index: raw output}`` for every
            layer run that has one: log-scores ``(N, P, K)`` of a GMM layer, logits
            ``(N, classes)`` of the classifier.
        """
        raw: dict[int, torch.Tensor] = {}
        stop = len(self.layers) if until is None else until + 1
        outputs: dict[int, torch.Tensor] = {self.layers[start].input_layer: x}  # output map of every layer run (and the input)
        skipped: dict[int, torch.Tensor] = {}  # input of every absorbed layer that was not run
        for layer in self.layers[start:stop]:
            if layer.input_layer in skipped:  # it computes its output from the input of the layer it absorbs
                value, x = layer.bottom_up_through(skipped.pop(layer.input_layer), self.layers[layer.input_layer], detach)
            else:
                source = outputs.get(layer.input_layer)
                if source is None:
                    raise ConfigError(f"{layer.name} reads layer {layer.input_layer}, which lies below start={start}")
                if self.absorbed.get(layer.index, stop) < stop:
                    skipped[layer.index] = source  # its reader runs in this pass and absorbs it
                    continue
                value, x = layer.bottom_up(source, detach)
            if value is not None:
                raw[layer.index] = value
            outputs[layer.index] = x
        return x, raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output map of the top layer for images ``(N, C, H, W)``."""
        return self.bottom_up(x)[0]

    def losses(self, raw: Mapping[int, torch.Tensor], labels: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """Scalar loss of every learning layer from its raw output (labels: for the classifier).

        Without labels (``None``), a layer whose loss reads labels has no loss (it is left out)."""
        return {
            index: self.layers[index].loss(value, labels)
            for index, value in raw.items()
            if self.layers[index].learns and (labels is not None or not self.layers[index].needs_labels)
        }

    @property
    def is_pixel_density(self) -> bool:
        """True when the stack is one GMM layer over non-overlapping patches that tile the image,
        so that its summed log-likelihood is a density over pixels (e.g. the flat GMM)."""
        density_layers = [layer for layer in self.layers if not layer.is_last]
        if len(self.gmm_layers) != 1 or not density_layers[-1].is_density:
            return False
        below = density_layers[:-1]
        if len(below) != 1 or below[0].kind != "folding":
            return False
        fold = below[0]
        _, height, width = self.input_shape
        (kh, kw), (sh, sw) = fold.kernel_size, fold.stride
        return ((kh, kw) == (sh, sw) and height % kh == 0 and width % kw == 0) or (kh, kw) == (height, width)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density of images ``(N, C, H, W)`` in nats per image: ``(N,)``.

        Only defined when :attr:`is_pixel_density`.
        """
        if not self.is_pixel_density:
            raise ConfigError("log_likelihood over pixels needs one gmm layer over a folding that tiles the image (a flat GMM)")
        _, raw = self.bottom_up(x, until=self.top_gmm.index)
        return GMMLayer.log_likelihood(raw[self.top_gmm.index])

    def constrain_(self) -> None:
        for layer in self.layers:
            layer.constrain_()

    def summary(self) -> list[dict]:
        """One row per layer: index, kind, output shape, parameter count, multiply-adds per image."""
        rows = []
        for layer in self.layers:
            rows.append(
                dict(
                    index=layer.index,
                    layer=layer.name,
                    detail=layer.extra_repr().split(", in=")[0],
                    in_shape=layer.in_shape,
                    out_shape=layer.out_shape,
                    params=sum(p.numel() for p in layer.parameters()),
                    macs=layer.macs_per_image(),
                )
            )
        return rows

    def summary_table(self) -> str:
        """The summary as a fixed-width text table (printed at the start of training)."""
        header = f"{'#':>2}  {'layer':<16}{'settings':<44}{'output (C,H,W)':<18}{'params':>10}{'MACs/image':>14}"
        lines = [header, "-" * len(header)]
        for row in self.summary():
            out = "x".join(str(v) for v in row["out_shape"])
            lines.append(
                f"{row['index']:>2}  {row['layer']:<16}{row['detail'][:43]:<44}{out:<18}{row['params']:>10,}{row['macs']:>14,}"
            )
        total_p = sum(r["params"] for r in self.summary())
        total_m = sum(r["macs"] for r in self.summary())
        lines.append("-" * len(header))
        lines.append(f"{'':>2}  {'total':<16}{'':<44}{'':<18}{total_p:>10,}{total_m:>14,}")
        return "\n".join(lines)

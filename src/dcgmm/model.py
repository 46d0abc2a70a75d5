"""The DCGMM stack: layers built from a topology (a list of layer specs), shapes inferred bottom-up.

A topology is a list of dicts, each with a ``kind`` (see :data:`dcgmm.layers.LAYER_KINDS`) and
that layer's parameters, e.g. the flat GMM::

    [{"kind": "folding", "kernel_size": 28}, {"kind": "gmm", "K": 25}]

GMM layers take unset parameters from ``gmm_defaults`` (the model-wide ``K``, ``lr``, ...), so a
model-wide override reaches every layer that does not set the value itself.

Training is layer-local (docs/design.md section 2): each GMM layer sees a detached input, so one backward
pass of the summed losses gives every layer exactly the gradient of its own loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from dcgmm.errors import ConfigError
from dcgmm.layers import LAYER_KINDS, Folding, GMMLayer, Layer, LinearClassifier, Shape


def build_layers(specs: Sequence[Mapping], input_shape: Shape, gmm_defaults: Mapping | None = None) -> list[Layer]:
    """Instantiate layers bottom-up, each from the previous layer's output shape.

    Raises a one-line :class:`ConfigError` for an empty list, an unknown kind, a missing or
    unknown parameter, or shapes that do not fit.
    """
    if specs is None or len(specs) == 0:
        raise ConfigError("the model has no layers: give model.layers as a list such as [{kind: folding, kernel_size: 28}, {kind: gmm, K: 25}]")
    shape: Shape = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"input_shape={list(input_shape)} must be [channels, height, width] with positive sizes")
    layers: list[Layer] = []
    out_shapes: list[Shape] = []  # output shape of every layer built so far
    for index, spec in enumerate(specs):
        if layers and isinstance(layers[-1], LinearClassifier):
            raise ConfigError(f"layer {index}: the classifier (layer {index - 1}) must be the last layer of the topology")
        if not isinstance(spec, Mapping) or "kind" not in spec:
            raise ConfigError(f"layer {index}: {spec!r} needs a 'kind' (one of {sorted(LAYER_KINDS)})")
        params = dict(spec)
        kind = params.pop("kind")
        if kind not in LAYER_KINDS:
            raise ConfigError(f"layer {index}: kind={kind!r} is unknown; known kinds: {', '.join(sorted(LAYER_KINDS))}")
        cls = LAYER_KINDS[kind]
        if cls is GMMLayer:
            declared_dim = params.pop("D", None)
            if declared_dim is not None and int(declared_dim) != shape[0]:
                raise ConfigError(
                    f"layer {index} (gmm): D={declared_dim} does not match the {shape[0]} channels "
                    f"that layer {index - 1} produces; drop D or make it {shape[0]}"
                )
            for key, value in (gmm_defaults or {}).items():
                if value is not None:
                    params.setdefault(key, value)
        if cls is LinearClassifier:
            gmm_below = [layer.index for layer in layers if isinstance(layer, GMMLayer)]
            source = params.get("input_layer")
            if source is None:
                if not gmm_below:
                    raise ConfigError(f"layer {index} (classifier): there is no gmm layer below it to read")
                source = gmm_below[-1]
            if isinstance(source, bool) or not isinstance(source, int) or not 0 <= source < index:
                raise ConfigError(
                    f"layer {index} (classifier): input_layer={source} does not exist below it; "
                    f"use a layer index from 0 to {index - 1} (gmm layers: {gmm_below})"
                )
            params["input_layer"] = source
            shape = out_shapes[source]
        try:
            layer = cls(shape, index=index, **params)
        except TypeError as err:  # unknown or missing keyword
            raise ConfigError(f"layer {index} ({kind}): {err}".replace(f"{cls.__name__}.__init__() ", "")) from None
        layers.append(layer)
        out_shapes.append(layer.out_shape)
        shape = layer.out_shape
    return layers


class DCGMM(nn.Module):
    """A stack of DCGMM layers.

    Args:
        layers: topology, a list of layer specs (see module docstring).
        input_shape: ``(C, H, W)`` of the images, e.g. ``(1, 28, 28)``.
        gmm_defaults: values for GMM-layer parameters that a spec leaves unset.
    """

    def __init__(self, layers: Sequence[Mapping], input_shape: Shape = (1, 28, 28), gmm_defaults: Mapping | None = None):
        super().__init__()
        self.input_shape: Shape = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
        self.layers = nn.ModuleList(build_layers(layers, self.input_shape, gmm_defaults))
        if not self.gmm_layers:
            raise ConfigError("the topology has no gmm layer; add at least one {kind: gmm}")
        # foldings whose GMM layer above computes its scores from the folding's input (no patch
        # copy, docs/design.md section 6); not one that a classifier reads
        read = {layer.input_layer for layer in self.layers if isinstance(layer, LinearClassifier)}
        self.convolved_foldings = frozenset(
            fold.index for fold, above in zip(self.layers[:-1], self.layers[1:])
            if isinstance(fold, Folding) and isinstance(above, GMMLayer) and above.convolves(fold) and fold.index not in read
        )

    @property
    def gmm_layers(self) -> list[GMMLayer]:
        return [layer for layer in self.layers if isinstance(layer, GMMLayer)]

    @property
    def top_gmm(self) -> GMMLayer:
        return self.gmm_layers[-1]

    @property
    def classifier(self) -> LinearClassifier | None:
        last = self.layers[-1]
        return last if isinstance(last, LinearClassifier) else None

    @property
    def learning_layers(self) -> list[Layer]:
        """Layers with a loss (GMM layers and the classifier), bottom to top."""
        return [layer for layer in self.layers if layer.has_loss]

    def bottom_up(
        self, x: torch.Tensor, until: int | None = None, start: int = 0, detach: bool = True
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run layers ``start..until`` (inclusive) bottom-up on ``x``, the input map of layer ``start``.

        For training every learning layer reads a detached input, so gradients stay inside the
        layer. ``detach=False`` keeps the graph through the whole pass (used by sharpening, which
        needs the gradient of a higher layer's objective with respect to an input map).

        Returns:
            the output map of the last layer run, and ``{layer index: raw output}`` for every
            learning layer run: log-scores ``(N, P, K)`` of a GMM layer, logits ``(N, classes)``
            of the classifier.
        """
        raw: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}  # output map of every layer run
        stop = len(self.layers) if until is None else until + 1
        patches_of: torch.Tensor | None = None  # input of a folding whose GMM layer convolves it
        for layer in self.layers[start:stop]:
            if layer.index in self.convolved_foldings and layer.index + 1 < stop:
                patches_of = x  # the GMM layer above computes its scores from this map (no patch copy)
                continue
            if isinstance(layer, GMMLayer):
                if patches_of is not None:
                    source = patches_of.detach() if detach else patches_of
                    scores = layer.log_scores_of_patches(source, self.layers[layer.index - 1])  # (N, P, K)
                    patches_of = None
                else:
                    scores = layer.log_scores(x.detach() if detach else x)  # (N, P, K)
                raw[layer.index] = scores
                x = layer.responsibilities(scores.detach() if detach else scores)  # (N, K, H, W)
            elif isinstance(layer, LinearClassifier):
                source = outputs[layer.input_layer]
                x = layer(source.detach() if detach else source)  # (N, classes)
                raw[layer.index] = x
            else:
                x = layer(x)
            outputs[layer.index] = x
        return x, raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output map of the top layer for images ``(N, C, H, W)``."""
        return self.bottom_up(x)[0]

    def losses(self, raw: Mapping[int, torch.Tensor], labels: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """Scalar loss of every learning layer from its raw output (labels: for the classifier)."""
        return {index: self.layers[index].loss(value, labels) for index, value in raw.items()}

    @property
    def is_pixel_density(self) -> bool:
        """True when the stack is one GMM layer over non-overlapping patches that tile the image,
        so that its summed log-likelihood is a density over pixels (e.g. the flat GMM)."""
        density_layers = [layer for layer in self.layers if not isinstance(layer, LinearClassifier)]
        if len(self.gmm_layers) != 1 or not isinstance(density_layers[-1], GMMLayer):
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
                    flops=layer.flops_per_image(),
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
                f"{row['index']:>2}  {row['layer']:<16}{row['detail'][:43]:<44}{out:<18}{row['params']:>10,}{row['flops']:>14,}"
            )
        total_p = sum(r["params"] for r in self.summary())
        total_f = sum(r["flops"] for r in self.summary())
        lines.append("-" * len(header))
        lines.append(f"{'':>2}  {'total':<16}{'':<44}{'':<18}{total_p:>10,}{total_f:>14,}")
        return "\n".join(lines)

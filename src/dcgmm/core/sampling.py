"""Top-down sampling from a DCGMM stack, with sharpening (docs/design.md section 3).

The sampler runs the layers' ``top_down`` methods from a chosen top layer down to the pixels:
a GMM layer draws a component per position (top-S of its prior) and a Gaussian sample in its
input space, a folding layer averages overlapping patches, a pooling layer copies its values
back into its windows, and the classifier maps a target class distribution to a prior over the
layer it reads. Everything is batched over images and positions.

Sharpening improves the map ``X0`` that the top-down pass produces below a folding layer by
gradient ascent on ``L_t(X) - w_rec * mean((X - X0)^2)``, ``L_t`` being the objective of a target
GMM layer above, computed by running the layers in between forward. The model's parameters are
never changed (gradients are taken with respect to ``X`` only).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dcgmm.core.layers import TOP_DRAWS, Folding, TopDownContext
from dcgmm.core.model import DCGMM
from dcgmm.errors import ConfigError


@dataclass
class SharpeningOptions:
    """Gradient-ascent sharpening below folding layers (docs/design.md section 3).

    Attributes:
        enabled: run sharpening at all.
        rate: step size of the ascent (published: 0.1 to 0.2); one number, or a mapping from
            folding layer index to its rate (the published topology C sharpens below layer 0 at
            0.2 and below layer 3 at 0.1).
        iterations: number of ascent steps (published: 300).
        reconstruction: weight ``w_rec`` of the penalty ``mean((X - X0)^2)`` (published: 0 to 0.1);
            one number or a mapping from folding layer index to its weight, like ``rate``.
        layers: folding layer indices to sharpen below; ``None``: every folding whose patches overlap.
        target: GMM layer whose objective is ascended; ``None``: the GMM layer right above each folding.
        progress: show a per-iteration progress bar.
    """

    enabled: bool = False
    rate: float | dict[int, float] = 0.1
    iterations: int = 300
    reconstruction: float | dict[int, float] = 0.0
    layers: list[int] | None = None
    target: int | None = None
    progress: bool = False

    def value(self, name: str, fold_index: int) -> float:
        """``rate`` or ``reconstruction`` below folding ``fold_index`` (a number, or its mapping entry)."""
        setting = getattr(self, name)
        if isinstance(setting, dict):
            return float(setting[int(fold_index)])
        return float(setting)

    @classmethod
    def parse(cls, value) -> SharpeningOptions:
        """The one way to sharpening options from what a user gives: ``None``/``False`` (off),
        ``True`` (on, the defaults), a mapping of the fields (on unless it says ``enabled: false``;
        a Hydra node works) or ``SharpeningOptions``. Unknown keys: a one-line ConfigError."""
        if isinstance(value, cls):
            return value
        if value is None or value is False:
            return cls(enabled=False)
        if value is True:
            return cls(enabled=True)
        if isinstance(value, Mapping):
            settings = {"enabled": True, **{str(k): v for k, v in value.items()}}
            unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
            if unknown:
                known = ", ".join(cls.__dataclass_fields__)
                raise ConfigError(f"sharpening={dict(value)!r} has unknown keys ({', '.join(unknown)}); known: {known}")
            if settings.get("layers") is not None:
                settings["layers"] = [int(v) for v in settings["layers"]]
            for name in ("rate", "reconstruction"):  # per-folding mappings: int keys (JSON and some YAML give strings)
                if isinstance(settings.get(name), Mapping):
                    settings[name] = _per_layer(settings[name], f"sharpening {name}", float)
            return cls(**settings)
        raise ConfigError(f"sharpening={value!r} must be True/False, a dict of SharpeningOptions fields or SharpeningOptions")


POOLING_MODES = ("dense", "sparse")


@dataclass
class SamplingOptions:
    """Options of the top-down pass; the one home of their defaults and their checks
    (:meth:`parse`), used by ``sample.py``, the estimator, the sampling callbacks and NDB.

    Attributes:
        top_s: each GMM layer draws among the ``top_s`` largest entries of its prior (>= 1); one
            number, or a mapping from GMM layer index to its S (a layer the mapping does not name
            draws among all its components).
        divisor: GMM standard deviations are divided by this (> 0; published 5 to 20); one
            number, or a mapping from GMM layer index to its divisor (a layer it does not name: 1,
            the learned spread).
        top: what the layer where an unconditional pass starts draws from: ``"weights"`` (its
            learned pi), ``"uniform"`` (uniformly over K, the authors' code) or ``"cycle"``
            (sample ``i`` takes component ``i mod K``, the authors' sharpening scripts).
        pooling_mode: ``"dense"`` or ``"sparse"`` top-down of pooling layers.
        clamp: clip the final images to ``[0, 1]``.
        sharpening: see :class:`SharpeningOptions`.
    """

    top_s: int | dict[int, int] = 1
    divisor: float | dict[int, float] = 5.0
    top: str = "weights"
    pooling_mode: str = "dense"
    clamp: bool = True
    sharpening: SharpeningOptions = field(default_factory=SharpeningOptions)

    @classmethod
    def parse(cls, options: Mapping | None = None) -> SamplingOptions:
        """Options from a mapping of some of the fields (the estimator's keyword arguments, a Hydra
        node, a callback's settings); the others keep their defaults. Each bad value or unknown key
        is a one-line ConfigError."""
        given = {str(k): v for k, v in (options or {}).items()}
        unknown = sorted(set(given) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown sampling option(s) {', '.join(unknown)}; known: {', '.join(cls.__dataclass_fields__)}, seed")
        options = cls()
        if "top_s" in given:
            options.top_s = _per_layer(given["top_s"], "top_s", _top_s)
        if "divisor" in given:
            options.divisor = _per_layer(given["divisor"], "divisor", _divisor)
        if "top" in given:
            if given["top"] not in TOP_DRAWS:
                raise ConfigError(f"top={given['top']!r} is unknown; use one of {', '.join(TOP_DRAWS)}")
            options.top = str(given["top"])
        if "pooling_mode" in given:
            if given["pooling_mode"] not in POOLING_MODES:
                raise ConfigError(f"pooling_mode={given['pooling_mode']!r} is unknown; use one of {', '.join(POOLING_MODES)}")
            options.pooling_mode = str(given["pooling_mode"])
        if "clamp" in given:
            if not isinstance(given["clamp"], bool):
                raise ConfigError(f"clamp={given['clamp']!r} must be true or false")
            options.clamp = given["clamp"]
        if "sharpening" in given:
            options.sharpening = SharpeningOptions.parse(given["sharpening"])
        return options


def _top_s(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ConfigError(f"top_s={value!r} must be a positive integer")
    return int(value)


def _divisor(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"divisor={value!r} must be a number > 0 (published values: 5 to 20)")
    if not float(value) > 0:
        raise ConfigError(f"divisor={float(value)} must be > 0 (published values: 5 to 20)")
    return float(value)


def _per_layer(value, name: str, check):
    """One checked value, or a mapping ``{GMM layer index: value}`` of checked values."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if isinstance(key, bool) or not str(key).lstrip("-").isdigit():
                raise ConfigError(f"{name}={dict(value)!r}: the keys are layer indices (integers), not {key!r}")
            out[int(key)] = check(item)
        return out
    return check(value)


def layer_value(setting, index: int, unnamed):
    """The value of a per-layer option (:attr:`SamplingOptions.top_s`, ``divisor``) at layer ``index``."""
    return setting.get(int(index), unnamed) if isinstance(setting, dict) else setting


MASK_PRESETS = ("right_half", "left_half", "top_half", "bottom_half", "box")


def missing_pixels(mask, image_shape: Sequence[int], n: int = 1, box: Sequence[int] | None = None) -> torch.Tensor:
    """The in-painting mask as bool ``(1 or n, C, H, W)``, **True where a pixel is missing** (the one
    convention of ``sample.py mode=inpaint``, the estimator's ``inpaint`` and :meth:`Sampler.inpaint`).

    ``mask`` is a preset name (``right_half``, ``left_half``, ``top_half``, ``bottom_half``, or
    ``box`` with ``box=[top, left, height, width]`` in pixels) or an array, True (or 1) where
    missing: ``(H, W)``, ``(C, H, W)``, ``(n or 1, H, W)`` for one channel, or ``(n or 1, C, H, W)``.
    """
    channels, height, width = (int(v) for v in image_shape)
    if isinstance(mask, str):
        missing = torch.zeros(1, channels, height, width, dtype=torch.bool)
        if mask == "right_half":
            missing[..., width // 2 :] = True
        elif mask == "left_half":
            missing[..., : width // 2] = True
        elif mask == "bottom_half":
            missing[..., height // 2 :, :] = True
        elif mask == "top_half":
            missing[..., : height // 2, :] = True
        elif mask == "box":
            if box is None or len(box) != 4:
                raise ConfigError("mask=box needs box=[top, left, height, width] in pixels, e.g. box=[8,8,12,12]")
            top, left, h, w = (int(v) for v in box)
            if h < 1 or w < 1 or not (0 <= top < height and 0 <= left < width):
                raise ConfigError(f"box={list(box)} does not lie inside the {height}x{width} image")
            missing[..., top : top + h, left : left + w] = True
        else:
            raise ConfigError(f"mask={mask!r} is unknown; use one of {', '.join(MASK_PRESETS)} or a boolean array")
        return missing
    tensor = mask.detach().cpu() if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    if tensor.dtype != torch.bool:
        if tensor.is_complex() or not bool(((tensor == 0) | (tensor == 1)).all()):
            raise ConfigError("mask must be boolean (True = missing pixel) or hold only 0 and 1")
        tensor = tensor != 0
    shape = tuple(tensor.shape)
    if shape == (height, width):
        tensor = tensor.view(1, 1, height, width).expand(1, channels, height, width)
    elif shape == (channels, height, width):
        tensor = tensor.unsqueeze(0)
    elif len(shape) == 3 and channels == 1 and shape[1:] == (height, width) and shape[0] in (1, n):
        tensor = tensor.unsqueeze(1)
    elif not (len(shape) == 4 and shape[1:] == (channels, height, width) and shape[0] in (1, n)):
        raise ConfigError(
            f"mask has shape {shape}; give ({height}, {width}), ({channels}, {height}, {width}) or "
            f"({n}, {channels}, {height}, {width}), True where pixels are missing"
        )
    return tensor


class Sampler:
    """Draws images from a :class:`~dcgmm.core.model.DCGMM` top-down.

    Args:
        stack: the model.
        options: :class:`SamplingOptions`; validated against the stack at construction.
        generator: torch random generator for reproducible draws (on the model's device).
    """

    def __init__(self, stack: DCGMM, options: SamplingOptions | None = None, generator: torch.Generator | None = None):
        self.stack = stack
        self.options = options or SamplingOptions()
        self.generator = generator
        self._validate()

    # ------------------------------------------------------------------------------ checks
    def _validate(self) -> None:
        opts = self.options
        gmm_layers = [layer.index for layer in self.stack.gmm_layers]
        for name in ("top_s", "divisor"):
            setting = getattr(opts, name)
            if isinstance(setting, dict) and set(setting) - set(gmm_layers):
                raise ConfigError(f"{name}={setting} names layer(s) {sorted(set(setting) - set(gmm_layers))}, which are not gmm layers; gmm layers: {gmm_layers}")
        for layer in self.stack.layers:
            layer.check_top_down(self.context(None, layer.index))
        sharp = opts.sharpening
        if sharp.enabled:
            foldings = self.sharpened_foldings()
            for name in ("rate", "reconstruction"):
                setting = getattr(sharp, name)
                if isinstance(setting, dict):
                    setting = {int(k): float(v) for k, v in setting.items()}
                    setattr(sharp, name, setting)
                    missing = sorted(set(foldings) - set(setting))
                    if missing:
                        raise ConfigError(f"sharpening {name}={setting} sets no value for the sharpened folding layer(s) {missing}; give one per layer in {foldings}")
            for fold_index in foldings:
                rate, weight = sharp.value("rate", fold_index), sharp.value("reconstruction", fold_index)
                if sharp.iterations < 0 or not rate > 0 or weight < 0:
                    raise ConfigError(
                        f"sharpening needs iterations >= 0, rate > 0 and reconstruction >= 0 "
                        f"(got {sharp.iterations}, {rate}, {weight} below layer {fold_index})"
                    )
                self.sharpening_target(fold_index)  # raises on a bad target

    def sharpened_foldings(self) -> list[int]:
        """Indices of the folding layers below which sharpening runs."""
        sharp = self.options.sharpening
        foldings = [layer.index for layer in self.stack.layers if layer.sharpenable]
        if sharp.layers is None:
            return [i for i in foldings if self.stack.layers[i].patches_overlap]
        for index in sharp.layers:
            if index not in foldings:
                raise ConfigError(f"sharpening layers={list(sharp.layers)}: layer {index} is not a folding layer; folding layers: {foldings}")
        return list(sharp.layers)

    def sharpening_target(self, fold_index: int) -> int:
        """The GMM layer whose objective sharpening ascends below folding ``fold_index``."""
        target = self.options.sharpening.target
        above = [layer.index for layer in self.stack.gmm_layers if layer.index > fold_index]
        if target is None:
            if not above:
                raise ConfigError(f"sharpening below layer {fold_index}: there is no gmm layer above it")
            return above[0]
        if target not in [layer.index for layer in self.stack.gmm_layers]:
            raise ConfigError(
                f"sharpening target={target} is not a gmm layer; gmm layers: {[g.index for g in self.stack.gmm_layers]}"
            )
        if target <= fold_index:
            raise ConfigError(f"sharpening target={target} lies below folding layer {fold_index}; use a gmm layer above it: {above}")
        return target

    # ------------------------------------------------------------------------------ sampling
    @property
    def device(self) -> torch.device:
        return next(self.stack.parameters()).device

    def context(self, n: int | None, index: int) -> TopDownContext:
        """The :class:`~dcgmm.core.layers.TopDownContext` that layer ``index`` receives in a pass
        (per-layer ``top_s`` and ``divisor`` resolved for it)."""
        opts = self.options
        top_s = layer_value(opts.top_s, index, getattr(self.stack.layers[index], "K", 1))
        return TopDownContext(n=n, top_s=top_s, divisor=layer_value(opts.divisor, index, 1.0), top=opts.top, pooling_mode=opts.pooling_mode,
                              generator=self.generator)

    def top_down(self, start: int, signal: torch.Tensor | None, n: int | None = None) -> torch.Tensor:
        """Run ``top_down`` from layer ``start`` (given its output-space signal) to the pixels,
        each layer handing its result to the layer it reads (``input_layer``).

        ``signal=None`` at a GMM layer means its mixture weights at every position.
        Returns images ``(N, C, H, W)``.
        """
        opts = self.options
        sharpen = set(self.sharpened_foldings()) if opts.sharpening.enabled else set()
        x, layer = signal, self.stack.layers[start]
        with torch.no_grad():
            while True:
                x = layer.top_down(x, self.context(n, layer.index))
                if layer.index in sharpen:
                    x = self.sharpen(x, layer.index)
                if layer.input_layer < 0:
                    break
                layer = self.stack.layers[layer.input_layer]
        return x.clamp(0.0, 1.0) if opts.clamp else x

    def sharpen(self, x0: torch.Tensor, fold_index: int) -> torch.Tensor:
        """Gradient ascent on the input map ``x0`` of folding ``fold_index`` (see module docstring)."""
        sharp = self.options.sharpening
        target = self.sharpening_target(fold_index)
        x = x0.detach().clone()
        steps = range(int(sharp.iterations))
        rate = sharp.value("rate", fold_index)
        if sharp.progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=f"sharpening below L{fold_index} (target L{target})", leave=False)
        with torch.enable_grad():
            for _ in steps:
                x.requires_grad_(True)
                gain = self.sharpening_objective(x, x0, fold_index, target)
                (grad,) = torch.autograd.grad(gain, x)
                x = (x + rate * grad).detach()
        return x

    def sharpening_objective(self, x: torch.Tensor, x0: torch.Tensor, fold_index: int, target: int) -> torch.Tensor:
        """``L_t(x) - w_rec * mean((x - x0)^2)``, ``L_t`` = target layer's mean objective over the batch."""
        _, raw = self.stack.bottom_up(x, start=fold_index, until=target, detach=False)
        objective = self.stack.layers[target].objective(raw[target]).mean()
        weight = self.options.sharpening.value("reconstruction", fold_index)
        return objective - weight * (x - x0.detach()).pow(2).mean() if weight else objective

    def sample(self, n: int, top: int | None = None) -> torch.Tensor:
        """``n`` unconditional samples from GMM layer ``top`` (default: the top GMM layer) down."""
        if n is None or int(n) < 1:
            raise ConfigError(f"n={n} must be a positive number of samples")
        top = self.stack.top_gmm.index if top is None else top
        if not self.stack.layers[top].is_density:
            raise ConfigError(f"sampling starts at a gmm layer; layer {top} is a {self.stack.layers[top].kind}")
        return self.top_down(top, None, n=int(n))

    def conditional(self, classes: torch.Tensor | list[int], confidence: float = 0.95) -> torch.Tensor:
        """One sample per entry of ``classes``, drawn through the classifier's transposed map."""
        classifier = self.stack.classifier
        if classifier is None:
            raise ConfigError("conditional sampling needs a model with a classifier layer; use mode=unconditional")
        classes = torch.as_tensor(classes, dtype=torch.long, device=self.device).flatten()
        if len(classes) == 0:
            raise ConfigError("conditional sampling needs at least one class")
        bad = sorted({int(c) for c in classes if not 0 <= int(c) < classifier.num_classes})
        if bad:
            raise ConfigError(f"classes {bad} are not among the classifier's classes 0..{classifier.num_classes - 1}")
        return self.top_down(classifier.index, classifier.target_distribution(classes, confidence))

    def variants(self, images: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Variants of real images: their responsibilities at GMM ``layer`` as the top-down prior."""
        layer = self.stack.top_gmm.index if layer is None else layer
        if layer not in [g.index for g in self.stack.gmm_layers]:
            raise ConfigError(f"variants start at a gmm layer; layer {layer} is not one (gmm layers: {[g.index for g in self.stack.gmm_layers]})")
        with torch.no_grad():
            responsibilities, _ = self.stack.bottom_up(images.to(self.device), until=layer)
        return self.top_down(layer, responsibilities)

    def inpaint(self, images: torch.Tensor, missing: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Fill the missing pixels (``missing`` True, :func:`missing_pixels`) of ``images`` by
        variant generation.

        The missing region is set to 0 before the bottom-up pass; the known pixels of the result
        are the input's, bit for bit.
        """
        images = images.to(self.device)
        known = ~missing.to(self.device).expand_as(images)
        masked = torch.where(known, images, torch.zeros_like(images))
        filled = self.variants(masked, layer)
        return torch.where(known, images, filled)

    def prototypes(self, layer: int) -> torch.Tensor:
        """What each component of GMM ``layer`` looks like in pixel space: ``(K, C, H, W)``.

        A patch model right above the pixels shows its means as patches ``(K, C, kh, kw)``.
        Otherwise: top-down from a one-hot prior on component k at every position, with
        ``top_s=1`` and standard deviations 0 at every layer below (every layer draws its mean).
        """
        gmm = self.stack.layers[layer]
        if not gmm.is_density:
            raise ConfigError(f"prototypes are defined for gmm layers; layer {layer} is a {gmm.kind}")
        below = self.stack.layers[layer - 1] if layer > 0 else None
        if gmm.P > 1 and isinstance(below, Folding) and below.index == 0:
            # a patch model right above the pixels: its means are image patches
            means = gmm.means.detach().mean(dim=0) if gmm.mode == "independent" else gmm.means.detach()[0]
            patches = means.view(gmm.K, *below.kernel_size, self.stack.input_shape[0]).permute(0, 3, 1, 2)  # (K, C, kh, kw)
            return patches.clamp(0.0, 1.0) if self.options.clamp else patches
        prior = torch.eye(gmm.K, device=self.device).view(gmm.K, gmm.K, 1, 1).expand(gmm.K, *gmm.out_shape)
        saved = self.options
        self.options = SamplingOptions(top_s=1, divisor=float("inf"), pooling_mode="dense", clamp=saved.clamp)
        try:
            return self.top_down(layer, prior.contiguous())
        finally:
            self.options = saved

    def variance_images(self, layer: int) -> torch.Tensor:
        """Per-component variances of GMM ``layer`` shown in pixel geometry: ``(K, 1, H, W)``.

        The variances live in the layer's input space; a folding directly below maps them onto
        its input grid (averaging overlaps). Maps whose channels are not pixels (responsibility
        channels of a lower layer) are averaged over channels.
        """
        gmm = self.stack.layers[layer]
        if not gmm.is_density:
            raise ConfigError(f"variance images are defined for gmm layers; layer {layer} is a {gmm.kind}")
        variances = gmm.variances.mean(dim=0) if gmm.mode == "independent" else gmm.variances[0]  # (K, D)
        maps = variances.view(gmm.K, gmm.D, 1, 1).expand(gmm.K, *gmm.in_shape)  # (K, D, H, W)
        below = self.stack.layers[layer - 1] if layer > 0 else None
        if isinstance(below, Folding):
            maps = below.top_down(maps.contiguous())
        return maps.mean(dim=1, keepdim=True)

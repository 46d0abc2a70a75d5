"""Per-image scores of a trained DCGMM stack, read from its top GMM layer (docs/design.md section 4).

* typicality: the top GMM layer's objective per image (mean over its positions; the annealed
  max-component bound, or the exact log-sum-exp for ``loss: logsumexp``). Higher = more typical;
  the outlier score is its negative.
* per-layer typicality (:func:`layer_typicalities`): every GMM layer's objective per image (mean
  over its positions), their sum, and the top layer's, from one bottom-up pass; the outlier score
  ``outlier.score=top|sum|layer:<i>`` picks one of them (:func:`parse_outlier_score`).
* cluster id: the top GMM layer's most responsible component per image. With one position (the
  flat GMM and topologies whose top layer sees the whole image) this is ``argmax_k l_k(x)``; with
  several positions it is the component with the largest mean responsibility over positions.
"""

from __future__ import annotations

import math
from functools import cached_property

import torch

from dcgmm.core.model import DCGMM
from dcgmm.errors import ConfigError

LN2 = math.log(2.0)

__all__ = [
    "EvalOutputs",
    "batched_typicalities",
    "cluster_ids",
    "layer_typicalities",
    "parse_outlier_score",
    "top_scores",
    "typicalities_from_raw",
    "typicality",
    "typicality_from_scores",
]


def top_scores(stack: DCGMM, x: torch.Tensor) -> torch.Tensor:
    """Log-scores of the top GMM layer for images ``(N, C, H, W)``: ``(N, P, K)`` (layers above
    it, such as a classifier, are not run)."""
    top = stack.top_gmm
    _, raw = stack.bottom_up(x, until=top.index)
    return raw[top.index]


def typicality_from_scores(stack: DCGMM, scores: torch.Tensor) -> torch.Tensor:
    """The top layer's objective per image from its log-scores: ``(N, P, K) -> (N,)``."""
    return stack.top_gmm.objective(scores)


def cluster_ids(scores: torch.Tensor) -> torch.Tensor:
    """Cluster id per image from the top layer's log-scores: ``(N, P, K) -> (N,)`` int64."""
    if scores.shape[1] == 1:
        return scores[:, 0].argmax(dim=-1)
    return torch.softmax(scores, dim=-1).mean(dim=1).argmax(dim=-1)


@torch.no_grad()
def batched_typicalities(stack: DCGMM, images: torch.Tensor, batch_size: int = 1000) -> dict[str, torch.Tensor]:
    """:func:`layer_typicalities` of many images ``(N, C, H, W)``, in batches on the stack's device:
    ``{key: (N,)}`` on that device (empty for no images)."""
    device = next(stack.parameters()).device
    parts = [layer_typicalities(stack, images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size)]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]} if parts else {}


def typicality(stack: DCGMM, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The top layer's typicality of many images ``(N, C, H, W)`` in batches: ``(N,)`` on the CPU."""
    scores = batched_typicalities(stack, images, batch_size)
    return scores["top"].cpu() if scores else torch.empty(0)


def bits_per_dim(stack: DCGMM, x: torch.Tensor) -> torch.Tensor:
    """Bits per dimension of 8-bit images given as ``x = u8 / 255`` in ``[0, 1]``: ``(N,)``, for a
    stack that is a density over pixels (``stack.is_pixel_density``, e.g. the flat GMM).

    Uniform dequantisation: ``x' = (u8 + u) / 256`` with ``u ~ U[0, 1)`` (torch's global generator);
    the probability of the 8-bit image is ``p(x') / 256^D``, so ``bpd = 8 - log p(x') / (D ln 2)``.
    """
    pixels = torch.round(x * 255.0)
    dequantised = (pixels + torch.rand_like(pixels)) / 256.0
    dims = x[0].numel()
    return 8.0 - stack.log_likelihood(dequantised) / (dims * LN2)


def parse_outlier_score(score: str, stack: DCGMM | None = None) -> str:
    """Validate ``outlier.score`` (against the stack's GMM layers when given); return the key of
    :func:`layer_typicalities` (``"top"``, ``"sum"`` or ``"L<i>"``). A one-line
    :class:`ConfigError` lists the choices."""

    gmm = None if stack is None else [layer.index for layer in stack.gmm_layers]
    text = str(score).strip()
    if text in ("top", "sum"):
        return text
    index = text[6:].strip()
    if text.startswith("layer:") and index.isdigit() and (gmm is None or int(index) in gmm):
        return f"L{int(index)}"
    choices = ", ".join(["top", "sum"] + ([f"layer:{i}" for i in gmm] if gmm is not None else ["layer:<i>"]))
    raise ConfigError(f"outlier.score={score!r} is unknown; use one of {choices} (layer:<i> names a gmm layer)")


def layer_typicalities(stack: DCGMM, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every GMM layer's objective per image (mean over its positions) from one bottom-up pass:
    ``{"L<i>": (N,), ..., "top": (N,), "sum": (N,)}`` (higher = more typical)."""
    _, raw = stack.bottom_up(x, until=stack.top_gmm.index)
    return typicalities_from_raw(stack, raw)


def typicalities_from_raw(stack: DCGMM, raw: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`layer_typicalities` from the raw outputs of a bottom-up pass already made (the
    evaluation step's, :class:`dcgmm.app.module.EvalOutputs`): no second pass."""
    top = stack.top_gmm
    out = {f"L{layer.index}": layer.objective(raw[layer.index]) for layer in stack.gmm_layers}
    out["top"] = out[f"L{top.index}"]
    out["sum"] = torch.stack([out[f"L{layer.index}"] for layer in stack.gmm_layers]).sum(dim=0)
    return out


class EvalOutputs:
    """The inference results of one batch from one bottom-up pass, computed on first use.

    The one place where per-image results are read off a pass: the evaluation steps return it
    (``DCGMMModule.validation_step``/``test_step``, so the callbacks read ``outputs`` of
    ``on_*_batch_end`` instead of running the stack again), ``DCGMMModule.predict_step`` returns it
    (``trainer.predict``), and :class:`dcgmm.app.api.DCGMMEstimator` reads its scores, clusters and
    class probabilities from it (:meth:`of`).

    Attributes:
        raw: every layer's raw output of the pass, layer index -> tensor (a GMM layer's
            log-scores ``(N, P, K)``, the classifier's logits ``(N, classes)``).
        labels: class ids ``(N,)``, or ``None``.
    """

    def __init__(self, stack: DCGMM, raw: dict[int, torch.Tensor], labels: torch.Tensor | None = None) -> None:
        self.stack, self.raw, self.labels = stack, raw, labels

    @classmethod
    def of(cls, stack: DCGMM, x: torch.Tensor, labels: torch.Tensor | None = None, until: int | None = None) -> EvalOutputs:
        """One bottom-up pass of images ``x (N, C, H, W)`` through layers ``0..until`` (default: all)."""
        _, raw = stack.bottom_up(x, until=until)
        return cls(stack, raw, labels)

    @property
    def top_scores(self) -> torch.Tensor:
        """The top GMM layer's log-scores ``(N, P, K)`` (as :func:`top_scores`)."""
        return self.raw[self.stack.top_gmm.index]

    @cached_property
    def typicalities(self) -> dict[str, torch.Tensor]:
        """:func:`layer_typicalities` of the batch: ``{"L<i>": (N,), "top": (N,), "sum": (N,)}``."""
        return typicalities_from_raw(self.stack, self.raw)

    @property
    def typicality(self) -> torch.Tensor:
        """The top GMM layer's objective per image, ``(N,)`` (higher = more typical)."""
        if "typicalities" in self.__dict__:
            return self.typicalities["top"]
        return self.stack.top_gmm.objective(self.top_scores)

    @property
    def clusters(self) -> torch.Tensor:
        """Cluster id per image, ``(N,)`` int64 (:func:`cluster_ids`)."""
        return cluster_ids(self.top_scores)

    @property
    def component_probabilities(self) -> torch.Tensor:
        """The top GMM layer's responsibilities averaged over its positions: ``(N, K)``."""
        return torch.softmax(self.top_scores, dim=-1).mean(dim=1)

    @property
    def top_log_likelihood(self) -> torch.Tensor:
        """Exact log-likelihood of the top GMM layer's input per image, summed over its positions,
        in nats: ``(N,)``. A density over pixels when ``stack.is_pixel_density`` (a flat GMM)."""
        return self.stack.top_gmm.log_likelihood(self.top_scores)

    @property
    def class_logits(self) -> torch.Tensor | None:
        """The classifier's logits ``(N, classes)``, or ``None`` without a classifier (or when the
        pass stopped below it)."""
        classifier = self.stack.classifier
        return None if classifier is None else self.raw.get(classifier.index)

    @property
    def class_probabilities(self) -> torch.Tensor | None:
        """Softmax of :attr:`class_logits`: ``(N, classes)``, or ``None``."""
        logits = self.class_logits
        return None if logits is None else torch.softmax(logits, dim=-1)

"""Evaluation metrics as torchmetrics objects (accumulate over batches, synchronise under DDP).

* :class:`WeightedMean`: the (weighted) mean of a stream of values, with no host synchronisation
  per update (the module's losses, log-likelihoods and accuracy).
* :class:`ClusteringScores`: label-based scores of a clustering (docs/design.md section 4): cluster purity,
  normalised mutual information (NMI), adjusted Rand index (ARI) and the accuracy under the best
  one-to-one matching of clusters to classes (Hungarian matching).
* :func:`internal_indices`: label-free indices of a clustering of points, the Dunn index and the
  Davies-Bouldin index (what the authors' code carries; computed on the images in pixel space).
* :func:`auroc_metric`: torchmetrics' ``BinaryAUROC``, exact and on raw scores (no sigmoid);
  :func:`outlier_auroc`: the AUROC of outlier detection from per-image typicality scores.

Sign convention for outliers, everywhere in the project: a *typicality* score is higher for more
typical images (the top GMM layer's objective, or a log-likelihood); the *outlier score* is its
negative, and the AUROC is the probability that a random outlier gets a higher outlier score than
a random inlier (ties count one half).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC

__all__ = ["ClusteringScores", "WeightedMean", "auroc_metric", "clustering_scores", "internal_indices", "outlier_auroc"]


def clustering_scores(contingency: np.ndarray | torch.Tensor, hungarian: bool | None = None) -> dict[str, float]:
    """Clustering scores from a contingency table ``(clusters, classes)`` of counts.

    Scores (all in [0, 1] except ARI, which can be slightly negative):

    * ``purity``: every cluster votes for its majority class; the fraction of images that are of
      their cluster's majority class (a many-to-one matching, so it grows with K).
    * ``nmi``: mutual information over the arithmetic mean of the two entropies (scikit-learn's
      ``normalized_mutual_info_score`` with its default ``average_method="arithmetic"``).
    * ``ari``: adjusted Rand index (scikit-learn's ``adjusted_rand_score``).
    * ``hungarian_acc``: accuracy under the best one-to-one matching of clusters to classes
      (``scipy.optimize.linear_sum_assignment`` on the table). Included when ``hungarian`` is True,
      or, by default (``None``), when the number of clusters equals the number of classes present
      (columns with a non-zero count). With more clusters than classes a one-to-one matching
      leaves images of the extra clusters unmatched; ``purity`` is the many-to-one counterpart.

    Rows (clusters) and columns (classes) with no images are ignored by purity, NMI and ARI.
    """
    table = torch.as_tensor(contingency).detach().cpu().to(torch.float64).numpy()
    if table.ndim != 2:
        raise ValueError(f"contingency must be a (clusters, classes) table, got shape {table.shape}")
    n = float(table.sum())
    if n == 0:
        raise ValueError("no images: the contingency table is empty (call update() before compute())")
    classes_present = int((table.sum(0) > 0).sum())
    if hungarian is None:
        hungarian = table.shape[0] == classes_present
    scores = {"purity": float(table.max(axis=1).sum() / n), "nmi": _nmi(table), "ari": _ari(table)}
    if hungarian:
        used = table[:, table.sum(0) > 0]
        rows, cols = linear_sum_assignment(used, maximize=True)
        scores["hungarian_acc"] = float(used[rows, cols].sum() / n)
    return scores


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _nmi(table: np.ndarray) -> float:
    clusters, classes = table.sum(1), table.sum(0)
    n_clusters, n_classes = int((clusters > 0).sum()), int((classes > 0).sum())
    if n_clusters == n_classes == 1:  # neither labelling splits the data: a perfect match
        return 1.0
    if n_clusters == 1 or n_classes == 1:  # one side has zero entropy, so the MI is 0
        return 0.0
    n = table.sum()
    i, j = np.nonzero(table)
    nij = table[i, j]
    mi = float((nij / n * (np.log(nij) + math.log(n) - np.log(clusters[i]) - np.log(classes[j]))).sum())
    if mi <= np.finfo(np.float64).eps:
        return 0.0
    return mi / (0.5 * (_entropy(clusters) + _entropy(classes)))


def _ari(table: np.ndarray) -> float:
    """Adjusted Rand index through the pair-confusion counts (as scikit-learn computes it)."""
    n = table.sum()
    sum_squares = (table**2).sum()
    clusters, classes = table.sum(1), table.sum(0)
    tp = sum_squares - n  # ordered pairs together in both labellings
    fp = (clusters**2).sum() - sum_squares  # together in the clustering only
    fn = (classes**2).sum() - sum_squares  # together in the classes only
    tn = n * n - tp - fp - fn - n
    if fp == 0 and fn == 0:
        return 1.0
    return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


class WeightedMean(Metric):
    """Weighted mean ``sum(w * v) / sum(w)`` of the values passed to ``update``, summed over
    data-parallel processes by ``compute``.

    ``update(value, weight=1.0)``: ``value`` a float or a tensor of any shape (each element one
    value), ``weight`` a float or a tensor that broadcasts to it (a batch's mean loss with
    ``weight=batch size`` counts as that many values). Unlike torchmetrics' ``MeanMetric``, whose
    NaN check reads every update back to the host (a GPU synchronisation per batch), nothing is
    checked: a NaN or infinite value makes the mean NaN or infinite, which is what gets logged.
    The sums are kept in float32 on the metric's device; ``compute`` is NaN before any update.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: float | torch.Tensor, weight: float | torch.Tensor = 1.0) -> None:
        # a Python number enters as a kernel argument: made into a device tensor it would be a
        # blocking host-to-device copy, i.e. the synchronisation this metric exists to avoid
        if not isinstance(value, torch.Tensor):
            if not isinstance(weight, torch.Tensor):
                self.total += float(value) * float(weight)
                self.weight += float(weight)
                return
            weights = weight.to(device=self.total.device, dtype=self.total.dtype).sum()  # the value once per weight
            self.total += weights * float(value)
            self.weight += weights
            return
        value = value.to(device=self.total.device, dtype=self.total.dtype)
        if isinstance(weight, torch.Tensor):
            weight = torch.broadcast_to(weight.to(device=self.total.device, dtype=self.total.dtype), value.shape)
            self.total += (value * weight).sum()
            self.weight += weight.sum()
        else:
            self.total += value.sum() * float(weight)
            self.weight += value.numel() * float(weight)

    def compute(self) -> torch.Tensor:
        return self.total / self.weight


class ClusteringScores(Metric):
    """Label-based scores of cluster ids: purity, NMI, ARI and (when K = number of classes)
    the Hungarian-matching accuracy; see :func:`clustering_scores`.

    The state is the contingency table ``(num_clusters, num_classes)`` of counts, summed over
    batches and, under DDP, over processes. ``compute()`` returns a dict of float64 scalar tensors.

    Args:
        num_clusters: K, cluster ids lie in ``[0, K)``.
        num_classes: class ids lie in ``[0, num_classes)`` (classes absent from the data, e.g. a
            held-out class, do not count towards "the number of classes").
        hungarian: ``None`` (default): report ``hungarian_acc`` only when K equals the number of
            classes present; ``True``/``False``: always / never.

    Example::

        metric = ClusteringScores(num_clusters=10, num_classes=10)
        for x, y in loader:
            metric.update(model_cluster_ids(x), y)
        metric.compute()  # {"purity": ..., "nmi": ..., "ari": ..., "hungarian_acc": ...}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_clusters: int, num_classes: int, hungarian: bool | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if int(num_clusters) < 1 or int(num_classes) < 1:
            raise ValueError(f"num_clusters={num_clusters} and num_classes={num_classes} must be >= 1")
        self.num_clusters, self.num_classes, self.hungarian = int(num_clusters), int(num_classes), hungarian
        self.add_state(
            "contingency", default=torch.zeros(self.num_clusters, self.num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: cluster ids ``preds`` and class ids ``target``, both integer ``(N,)``."""
        preds, target = preds.reshape(-1).long(), target.reshape(-1).long()
        if preds.shape != target.shape:
            raise ValueError(f"preds and target must have the same length, got {preds.numel()} and {target.numel()}")
        if preds.numel() == 0:
            return
        if int(preds.min()) < 0 or int(preds.max()) >= self.num_clusters:
            raise ValueError(f"cluster ids must lie in [0, {self.num_clusters}), got {int(preds.min())}..{int(preds.max())}")
        if int(target.min()) < 0 or int(target.max()) >= self.num_classes:
            raise ValueError(f"class ids must lie in [0, {self.num_classes}), got {int(target.min())}..{int(target.max())}")
        flat = preds * self.num_classes + target
        counts = torch.bincount(flat, minlength=self.num_clusters * self.num_classes)
        self.contingency += counts.view(self.num_clusters, self.num_classes).to(self.contingency.device)

    def compute(self) -> dict[str, torch.Tensor]:
        scores = clustering_scores(self.contingency, self.hungarian)
        return {name: torch.tensor(value, dtype=torch.float64) for name, value in scores.items()}


def auroc_metric(**kwargs) -> BinaryAUROC:
    """Exact (threshold-free) ``BinaryAUROC`` that takes raw scores as they are.

    torchmetrics applies a sigmoid to scores outside [0, 1] (it takes them for logits); on
    log-likelihood-sized scores (hundreds of nats) the sigmoid saturates to 1.0 and turns distinct
    scores into ties, which biases the AUROC. ``normalization=None`` keeps the scores unchanged.
    """
    return BinaryAUROC(thresholds=None, normalization=None, **kwargs)


def outlier_auroc(inlier_typicality, outlier_typicality) -> float:
    """Exact ROC AUC of detecting outliers by the outlier score ``-typicality``.

    Args:
        inlier_typicality, outlier_typicality: per-image typicality scores (higher = more typical,
            e.g. the top GMM layer's objective or a log-likelihood), arrays or tensors ``(N,)``.

    Returns:
        P(outlier score of a random outlier > that of a random inlier), ties counted one half;
        1.0 means every outlier is less typical than every inlier, 0.5 is chance.
    """
    inliers, outliers = _as_float64(inlier_typicality), _as_float64(outlier_typicality)
    if inliers.numel() == 0 or outliers.numel() == 0:
        raise ValueError(f"AUROC needs inliers and outliers, got {inliers.numel()} and {outliers.numel()}")
    metric = auroc_metric()
    target = torch.cat([torch.zeros(inliers.numel(), dtype=torch.long), torch.ones(outliers.numel(), dtype=torch.long)])
    metric.update(-torch.cat([inliers, outliers]), target)
    return float(metric.compute())


def _as_float64(values) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().to(torch.float64).reshape(-1)
    return torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1)


@torch.no_grad()
def internal_indices(points: torch.Tensor, labels: torch.Tensor, chunk: int = 1024) -> dict[str, float | None]:
    """Label-free indices of a clustering, Euclidean distances, ``points (N, D)``, ``labels (N,)``:

    * ``dunn``: the smallest distance between two points of different clusters divided by the
      largest distance between two points of one cluster (higher is better);
    * ``davies_bouldin``: the mean over clusters i of ``max_{j != i} (s_i + s_j) / |c_i - c_j|``,
      with ``c`` the centroids and ``s`` the mean distance of a cluster's points to its centroid
      (lower is better; as ``sklearn.metrics.davies_bouldin_score``).

    Both are ``None`` with fewer than two clusters. The pairwise distances are computed in chunks
    of ``chunk`` rows (memory ``chunk x N``), in float64.
    """
    x = points.detach().reshape(len(points), -1).to(torch.float64)
    y = labels.detach().reshape(-1).to(torch.long).to(x.device)
    clusters, y = torch.unique(y, return_inverse=True)  # relabel 0..C-1
    if len(clusters) < 2:
        return dict(dunn=None, davies_bouldin=None)
    count = torch.bincount(y).to(x.dtype)  # (C,)
    centroids = torch.zeros(len(clusters), x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x) / count[:, None]
    spread = torch.zeros(len(clusters), dtype=x.dtype, device=x.device).index_add_(0, y, (x - centroids[y]).norm(dim=1)) / count
    gaps = torch.cdist(centroids, centroids)  # (C, C)
    ratio = (spread[:, None] + spread[None, :]) / gaps
    ratio.fill_diagonal_(-math.inf)
    davies_bouldin = float(ratio.max(dim=1).values.mean())
    nearest, widest = math.inf, 0.0
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start : start + chunk], x)  # (chunk, N)
        same = y[start : start + chunk, None] == y[None, :]
        widest = max(widest, float(d.masked_fill(~same, 0.0).max()))
        nearest = min(nearest, float(d.masked_fill(same, math.inf).min()))
    dunn = nearest / widest if widest > 0 else math.inf
    return dict(dunn=dunn, davies_bouldin=davies_bouldin)

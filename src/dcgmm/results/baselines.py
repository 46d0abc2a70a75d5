"""scikit-learn EM baseline for the flat GMM (docs/design.md section 4): ``GaussianMixture(K, "diag")``.

Fits on the training pixels (``u8 / 255``, flattened to 784 values) of the classes a DCGMM run
would train on, then reports the same protocols as the DCGMM evaluation:

* clustering of the test images by ``predict`` (the most probable component), scored with
  :class:`dcgmm.core.metrics.ClusteringScores` (purity, NMI, ARI, Hungarian accuracy when K = classes);
* density: mean exact test log-likelihood (nats per image) and bits/dim with uniform
  dequantisation, as ``test/loglik`` and ``test/bpd`` of the flat DCGMM;
* outliers: ``score_samples`` (log-likelihood per image) as the typicality of the test inliers and
  of the outliers (held-out classes or another dataset), and the exact AUROC.

Example::

    from dcgmm.results.baselines import em_baseline
    result = em_baseline("mnist", K=25, held_out=[0])
    result["auroc"], result["cluster"]["nmi"], result["bpd"]
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from dcgmm.app.resolvers import held_out_list
from dcgmm.core.metrics import ClusteringScores, internal_indices, outlier_auroc
from dcgmm.data import DataError, canonical_name, dataset_info, load_dataset

__all__ = ["em_baseline", "fit_em_gmm", "flatten_u8", "split_for_baseline"]


def flatten_u8(images_u8: np.ndarray) -> np.ndarray:
    """uint8 ``(N, ...)`` -> float64 ``(N, D)`` in [0, 1] (``u8 / 255``)."""
    return images_u8.reshape(len(images_u8), -1).astype(np.float64) / 255.0


def split_for_baseline(
    dataset: str, data_dir, held_out=None, n_train: int | None = None, outlier_dataset: str | None = None, local_dir=None
) -> dict:
    """The data of a baseline run, as the DCGMM's outlier protocol splits it: ``train_x``/``train_y``
    (uint8 images and labels of the kept classes, the first ``n_train``), ``test_x``/``test_y`` (the
    test inliers), ``outlier_x`` (the held-out classes' test images, then every test image of
    ``outlier_dataset``; empty when neither), ``classes`` and ``image_shape`` ``(C, H, W)``."""
    name = canonical_name(dataset)
    held = held_out_list(held_out)
    arrays = load_dataset(name, data_dir, local_dir)
    train_keep = ~np.isin(arrays["train_y"], held)
    test_keep = ~np.isin(arrays["test_y"], held)
    outliers = [arrays["test_x"][~test_keep]] if held else []
    if outlier_dataset is not None:
        other = canonical_name(outlier_dataset)
        outliers.append(load_dataset(other, data_dir, local_dir if other == name else None)["test_x"])
    if outliers and sum(len(o) for o in outliers) == 0:
        raise DataError(f"the outlier set is empty: the {name} test split has no images of classes {held}")
    test_x = arrays["test_x"]
    info = dataset_info(name)
    return dict(
        train_x=arrays["train_x"][train_keep][:n_train], train_y=arrays["train_y"][train_keep][:n_train],
        test_x=test_x[test_keep], test_y=arrays["test_y"][test_keep],
        outlier_x=np.concatenate(outliers) if outliers else test_x[:0],
        classes=int(arrays["test_y"].max()) + 1, image_shape=tuple(info.image_shape), array_shape=tuple(info.array_shape),
    )


def fit_em_gmm(
    x: np.ndarray, K: int, reg_covar: float = 0.05, max_iter: int = 100, seed: int = 0, init_params: str = "kmeans"
) -> GaussianMixture:
    """Fit ``GaussianMixture(K, covariance_type="diag")`` by EM on flattened images ``(N, D)``.

    ``reg_covar`` is added to every variance. Pixels that are 0 in every training image have zero
    variance, so a tiny value (scikit-learn's default 1e-6) makes the density degenerate; the
    default 0.05 equals the DCGMM's variance floor ``1/precision_max`` (which the DCGMM applies as
    a floor rather than an addition).
    """
    gmm = GaussianMixture(
        n_components=int(K), covariance_type="diag", reg_covar=float(reg_covar), max_iter=int(max_iter),
        random_state=int(seed), init_params=init_params,
    )
    return gmm.fit(x)


def em_baseline(
    dataset: str = "mnist",
    K: int = 25,
    data_dir: str | os.PathLike[str] = "data",
    held_out: int | Sequence[int] | None = None,
    outlier_dataset: str | None = None,
    n_train: int | None = None,
    reg_covar: float = 0.05,
    max_iter: int = 100,
    seed: int = 0,
    local_dir: str | os.PathLike[str] | None = None,
) -> dict:
    """Fit the EM baseline and score it on the test split.

    Args:
        dataset: training dataset (``"mnist"`` or ``"fashion"``).
        K: number of components.
        data_dir, local_dir: where the data lives, see :func:`dcgmm.data.load_dataset`.
        held_out: class id(s) left out of training; their test images are the outliers and the
            test inliers are the other classes (the protocol of ``experiment=outliers_mnist``).
        outlier_dataset: cross-dataset outliers: every test image of this dataset (training then
            uses every class of ``dataset`` unless ``held_out`` is also given).
        n_train: fit on the first ``n_train`` training images of the kept classes (``None``: all
            60000 minus held-out; the DCGMM trains on 55000 after its validation split).
        reg_covar, max_iter, seed: see :func:`fit_em_gmm`.

    Returns:
        dict with ``model`` (the fitted ``GaussianMixture``), ``K``, ``train_images``,
        ``test_images`` (inliers), ``loglik`` (mean test log-likelihood, nats per image), ``bpd``,
        ``cluster`` (dict of purity, nmi, ari and, when K = number of test classes,
        hungarian_acc), and when there are outliers ``outliers`` (count), ``auroc`` (exact ROC
        AUC of the outlier score ``-score_samples``), ``inlier_scores`` and ``outlier_scores``
        (``score_samples`` per image, float64 arrays).
    """
    split = split_for_baseline(dataset, data_dir, held_out, n_train, outlier_dataset, local_dir)
    x_train = split["train_x"]
    if len(x_train) < K:
        raise DataError(f"the EM baseline needs at least K={K} training images, got {len(x_train)}")
    x_test, y_test = flatten_u8(split["test_x"]), split["test_y"]

    gmm = fit_em_gmm(flatten_u8(x_train), K, reg_covar, max_iter, seed)
    inlier_scores = gmm.score_samples(x_test)  # (N,) nats

    clusters = ClusteringScores(num_clusters=K, num_classes=split["classes"])
    predicted = torch.from_numpy(gmm.predict(x_test))
    clusters.update(predicted, torch.from_numpy(y_test))
    dims = x_test.shape[1]
    rng = np.random.default_rng(seed)
    dequantised = (np.round(x_test * 255.0) + rng.random(x_test.shape)) / 256.0
    bpd = 8.0 - gmm.score_samples(dequantised).mean() / (dims * math.log(2.0))
    result = dict(
        model=gmm, K=int(K), train_images=len(x_train), test_images=len(x_test),
        loglik=float(inlier_scores.mean()), bpd=float(bpd),
        cluster={k: float(v) for k, v in clusters.compute().items()} | {
            k: v for k, v in internal_indices(torch.from_numpy(x_test), predicted).items() if v is not None
        },
    )

    if len(split["outlier_x"]):
        x_out = flatten_u8(split["outlier_x"])
        outlier_scores = gmm.score_samples(x_out)
        result.update(
            outliers=len(x_out), inlier_scores=inlier_scores, outlier_scores=outlier_scores,
            auroc=outlier_auroc(inlier_scores, outlier_scores),
        )
    return result

"""NDB: number of statistically different bins (Richardson & Weiss, NeurIPS 2018), docs/design.md section 4.

The training images are binned by k-means into ``B`` cells (Voronoi cells of the centroids).
A batch of samples is assigned to the same cells; a bin is "different" when a two-proportion
z-test rejects equal shares of training images and samples at level ``alpha``. ``NDB / B`` near 0
means the samples cover the training distribution like the data itself; mode collapse or missing
modes push it towards 1. The Jensen-Shannon divergence between the two bin histograms is
reported beside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm
from sklearn.cluster import KMeans

from dcgmm.core.sampling import Sampler, SamplingOptions, SharpeningOptions
from dcgmm.data.sources import atomic_file
from dcgmm.errors import ConfigError


@dataclass
class NDBResult:
    """``ndb``: number of different bins; ``bins``: B; ``ndb_ratio``: NDB/B; ``js``: JS divergence
    (nats) of the bin histograms; ``sample_share`` / ``train_share``: ``(B,)`` proportions."""

    ndb: int
    bins: int
    ndb_ratio: float
    js: float
    sample_share: np.ndarray
    train_share: np.ndarray

    def as_dict(self) -> dict[str, float]:
        return {"ndb": self.ndb, "bins": self.bins, "ndb_ratio": self.ndb_ratio, "js": self.js}


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence of two histograms, in nats (0 for equal, ln 2 at most)."""
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / b[mask])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


class NDB:
    """K-means bins of a training set and the NDB test against them.

    Args:
        train: training images ``(N, ...)`` (flattened internally), float in ``[0, 1]``.
        bins: number of k-means bins B (default 100).
        alpha: significance level of the two-proportion z-tests (default 0.05).
        kmeans_samples: k-means is fitted on at most this many training images (all are binned).
        seed: seed of the k-means subset and initialisation.
        cache: ``.npz`` file for the centroids and training shares (written once, read later);
            its content is keyed by a hash of the training set and the settings.
    """

    def __init__(self, train: torch.Tensor | np.ndarray, bins: int = 100, alpha: float = 0.05, kmeans_samples: int = 20000, seed: int = 0, cache: str | Path | None = None):
        if int(bins) < 2:
            raise ConfigError(f"ndb bins={bins} must be >= 2")
        if not 0 < alpha < 1:
            raise ConfigError(f"ndb alpha={alpha} must lie in (0, 1)")
        data = _flat(train)
        if len(data) < bins:
            raise ConfigError(f"ndb needs at least bins={bins} training images, got {len(data)}")
        self.bins, self.alpha = int(bins), float(alpha)
        key = hashlib.sha1(data[:: max(1, len(data) // 1000)].tobytes() + f"{len(data)}-{bins}-{kmeans_samples}-{seed}".encode()).hexdigest()[:16]
        cached = _read_cache(cache, key)
        if cached is None:
            rng = np.random.default_rng(seed)
            subset = data[rng.permutation(len(data))[:kmeans_samples]]
            kmeans = KMeans(n_clusters=self.bins, n_init=1, random_state=seed).fit(subset)
            self.centroids = kmeans.cluster_centers_.astype(np.float32)  # (B, D)
            self.train_counts = np.bincount(self.assign(data), minlength=self.bins)
            _write_cache(cache, key, self.centroids, self.train_counts)
        else:
            self.centroids, self.train_counts = cached

    def assign(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Nearest centroid of every image: ``(N,)`` bin ids."""
        data = torch.from_numpy(_flat(images))
        centroids = torch.from_numpy(self.centroids)
        d2 = (data * data).sum(1, keepdim=True) - 2 * data @ centroids.t() + (centroids * centroids).sum(1)
        return d2.argmin(1).numpy()

    def evaluate(self, samples: torch.Tensor | np.ndarray) -> NDBResult:
        """NDB of a batch of samples against the training bins."""
        counts = np.bincount(self.assign(samples), minlength=self.bins)
        n_s, n_t = counts.sum(), self.train_counts.sum()
        p_s, p_t = counts / n_s, self.train_counts / n_t
        pooled = (counts + self.train_counts) / (n_s + n_t)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n_s + 1 / n_t))
        z = np.divide(p_s - p_t, se, out=np.zeros_like(se), where=se > 0)
        different = int(np.sum(np.abs(z) > norm.ppf(1 - self.alpha / 2)))
        return NDBResult(different, self.bins, different / self.bins, js_divergence(p_s, p_t), p_s, p_t)


def _flat(images) -> np.ndarray:
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.ascontiguousarray(array.reshape(len(array), -1), dtype=np.float32)


def _read_cache(path, key):
    if path is None or not Path(path).exists():
        return None
    try:
        with np.load(path) as f:
            if str(f["key"]) != key:
                return None
            return f["centroids"], f["train_counts"]
    except (OSError, KeyError, ValueError):
        return None


def _write_cache(path, key, centroids, train_counts) -> None:
    if path is None:
        return
    with atomic_file(Path(path)) as f:
        np.savez(f, key=key, centroids=centroids, train_counts=train_counts)



# ---------------------------------------------------------------------------- NDB of a model's samples
def training_bins(datamodule, bins: int = 100, kmeans_samples: int = 20000, train_images: int | None = None, cache_dir: str | Path | None = None) -> NDB:
    """NDB bins of a set-up data module's training split (its first ``train_images`` images, all
    when ``None``), cached as ``<cache_dir>/ndb_<name>_B<bins>_n<images>_k<kmeans_samples>.npz``."""
    train_x = datamodule.dataset("train").x  # float32 (N, C, H, W) in [0, 1]
    images = train_x if train_images is None else train_x[: int(train_images)]
    cache = None if cache_dir is None else Path(cache_dir) / f"ndb_{datamodule.name}_B{int(bins)}_n{len(images)}_k{int(kmeans_samples)}.npz"
    return NDB(images, bins=int(bins), kmeans_samples=int(kmeans_samples), seed=0, cache=cache)


def sampling_options(stack, options: Mapping | None = None) -> SamplingOptions:
    """The sampling options of an NDB measurement: :meth:`SamplingOptions.parse` of ``options``,
    except that ``top_s`` absent or ``None`` means the stack's smallest K (the layer with the fewest
    components draws from its whole prior, as the results table's NDB does) and a larger single
    number is cut to it; a per-layer mapping is taken as it is."""
    given = dict(options or {})
    top_s = given.pop("top_s", None)
    parsed = SamplingOptions.parse(given if top_s is None else {**given, "top_s": top_s})
    smallest = min(layer.K for layer in stack.gmm_layers)
    if not isinstance(parsed.top_s, dict):
        parsed.top_s = smallest if top_s is None else min(parsed.top_s, smallest)
    return parsed


def sharpened_options(stack, options, sharpening: dict | None):
    """``options`` with sharpening (``{rate, iterations, reconstruction}``) switched on, or None when
    none is asked for or the stack has no folding whose patches overlap (nothing to sharpen)."""
    import dataclasses

    if not sharpening:
        return None
    sharp = SharpeningOptions(enabled=True, **{k: v for k, v in sharpening.items() if k in ("rate", "iterations", "reconstruction")})
    candidate = dataclasses.replace(options, sharpening=sharp)
    return candidate if Sampler(stack, candidate).sharpened_foldings() else None


@dataclass
class SampleQuality:
    """NDB of one batch of a model's samples: the result, the samples ``(n, C, H, W)``, the
    options they were drawn with and the seconds drawing and binning took."""

    result: NDBResult
    samples: torch.Tensor
    options: object
    seconds: float


def sample_quality(stack, binning: NDB, samples: int = 1000, options: Mapping | None = None, sharpening: dict | None = None,
                   seed: int = 0) -> dict[str, SampleQuality]:
    """NDB of ``samples`` images drawn from ``stack`` with the sampling ``options`` (:func:`sampling_options`;
    generator seeded with ``seed`` on the stack's device): ``{"plain": ...}``, and ``"sharpened"``
    (the same draws, then sharpened below the overlapping foldings) when ``sharpening`` is given and
    the stack has such foldings. Used by :class:`dcgmm.app.callbacks.SampleQualityNDB` and the
    results pipeline alike."""
    import time

    device = next(stack.parameters()).device
    plain = sampling_options(stack, options)
    out = {}
    for name, options in (("plain", plain), ("sharpened", sharpened_options(stack, plain, sharpening))):
        if options is None:
            continue
        start = time.perf_counter()
        drawn = Sampler(stack, options, torch.Generator(device=device).manual_seed(int(seed))).sample(int(samples))
        out[name] = SampleQuality(binning.evaluate(drawn), drawn, options, time.perf_counter() - start)
    return out

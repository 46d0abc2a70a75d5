"""Sample quality at test end: NDB and JS divergence of samples drawn from the model (docs/design.md
section 4), the same measurement as the results table's (:func:`dcgmm.app.ndb.sample_quality`)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from dcgmm.app.ndb import sample_quality, training_bins
from dcgmm.core.images import make_grid, save_png
from dcgmm.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["SampleQualityNDB"]


class SampleQualityNDB(Callback):
    """After testing, draw ``samples`` images from the model and log their NDB against k-means
    bins of the data module's training split: ``test/ndb_ratio`` (NDB/B, 0 = samples spread over
    the bins like the data), ``test/ndb_js`` (JS divergence of the bin histograms, nats), and with
    ``sharpening`` the same for the sharpened draws (``test/ndb_ratio_sharpened``,
    ``test/ndb_js_sharpened``). Sample grids go to ``<output_dir>/ndb_samples[_sharpened].png``.

    Runs on process 0 only (sampling is not data-parallel); the bins are cached in ``cache_dir``.

    Args:
        samples: images drawn (the results table uses 1000).
        bins: k-means bins B.
        kmeans_samples: training images k-means is fitted on (all are binned).
        train_images: bin only the first this many training images (``None``: all).
        top_s, divisor: sampling options (``top_s=None``: every GMM layer draws from its whole prior;
            ``divisor=None``: the sampler's default, :class:`~dcgmm.core.sampling.SamplingOptions`).
        sharpening: ``{rate, iterations, reconstruction}`` for a second, sharpened draw, or null.
        seed: seed of the draws.
        cache_dir: folder of the cached bins (``None``: not cached).
        output_dir: folder of the sample grids (``None``: none written).
    """

    def __init__(
        self,
        samples: int = 1000,
        bins: int = 100,
        kmeans_samples: int = 20000,
        train_images: int | None = None,
        top_s: int | None = None,
        divisor: float | None = None,
        sharpening: dict | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        if int(samples) < 1:
            raise ConfigError(f"callbacks.ndb.samples={samples} must be >= 1")
        self.samples, self.bins, self.kmeans_samples = int(samples), int(bins), int(kmeans_samples)
        self.train_images = None if train_images is None else int(train_images)
        self.options = {key: value for key, value in dict(top_s=top_s, divisor=divisor).items() if value is not None}
        self.sharpening = None if not sharpening else dict(sharpening)
        self.seed = int(seed)
        self.cache_dir, self.output_dir = cache_dir, output_dir
        self.result: dict[str, dict] = {}  # the last test's NDB results, by "plain" / "sharpened"

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.datamodule is None:
            return
        self.result = {}
        if trainer.is_global_zero:
            binning = training_bins(trainer.datamodule, self.bins, self.kmeans_samples, self.train_images, self.cache_dir)
            was_training = pl_module.training
            pl_module.eval()
            with torch.inference_mode(False):  # sharpening takes gradients with respect to the images
                quality = sample_quality(pl_module.stack, binning, self.samples, self.options, self.sharpening, self.seed)
            pl_module.train(was_training)
            for name, part in quality.items():
                self.result[name] = dict(part.result.as_dict(), samples=len(part.samples), top_s=part.options.top_s, seconds=part.seconds)
                if self.output_dir is not None:
                    suffix = "" if name == "plain" else f"_{name}"
                    Path(self.output_dir).mkdir(parents=True, exist_ok=True)
                    save_png(make_grid(part.samples[:64].cpu(), nrow=8), Path(self.output_dir) / f"ndb_samples{suffix}.png")
                log.info(f"NDB of {len(part.samples)} {name} samples: {part.result.ndb}/{part.result.bins} bins differ, JS {part.result.js:.4f}")
        logged = {}
        for name, values in self.result.items():
            suffix = "" if name == "plain" else f"_{name}"
            logged.update({f"test/ndb_ratio{suffix}": float(values["ndb_ratio"]), f"test/ndb_js{suffix}": float(values["js"])})
        pl_module.log_values(logged, rank_zero_only=True)  # on the axis of SGD steps (DCGMMModule.log_values)

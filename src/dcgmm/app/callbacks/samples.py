"""Sample grids, prototypes and variance images during training (W&B images and PNG files)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from dcgmm.core.images import make_grid, save_png
from dcgmm.core.sampling import Sampler, SamplingOptions

log = logging.getLogger(__name__)


class SampleImages(Callback):
    """Every ``every_n_epochs`` epochs (and after the last), draw ``n`` samples and render the
    prototype (mean) and variance images of every GMM layer.

    Images go to ``<output_dir>/images/epoch_<e>_<name>.png`` and, when a W&B logger is active,
    to W&B under ``images/samples``, ``images/prototypes/<layer>`` and ``images/variances/<layer>``.
    Only rank 0 draws. Sampling uses its own seeded generator, so training randomness is untouched.

    Args:
        every_n_epochs: cadence in epochs (>= 1).
        n: samples per grid.
        top_s, divisor: top-down settings (``None``: the defaults of :class:`~dcgmm.core.sampling.SamplingOptions`).
        output_dir: folder for the PNG files (default: the trainer's ``default_root_dir``).
        seed: seed of the sampling generator.
    """

    def __init__(self, every_n_epochs: int = 5, n: int = 16, top_s: int | None = None, divisor: float | None = None, output_dir: str | None = None,
                 seed: int = 0):
        super().__init__()
        if int(every_n_epochs) < 1 or int(n) < 1:
            raise ValueError(f"SampleImages needs every_n_epochs >= 1 and n >= 1 (got {every_n_epochs}, {n})")
        self.every_n_epochs, self.n = int(every_n_epochs), int(n)
        self.options = SamplingOptions.parse({key: value for key, value in dict(top_s=top_s, divisor=divisor).items() if value is not None})
        self.output_dir, self.seed = output_dir, int(seed)

    def render(self, pl_module: L.LightningModule) -> dict[str, object]:
        """All grids as ``uint8`` arrays, keyed by name."""
        stack = pl_module.stack
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        sampler = Sampler(stack, self.options, generator)
        grids = {"samples": make_grid(sampler.sample(self.n))}
        for gmm in stack.gmm_layers:
            grids[f"prototypes/{gmm.name}"] = make_grid(sampler.prototypes(gmm.index))
            grids[f"variances/{gmm.name}"] = make_grid(sampler.variance_images(gmm.index), normalize=True)
        return grids

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if trainer.sanity_checking or trainer.global_rank != 0 or (epoch % self.every_n_epochs and not last):
            return
        was_training = pl_module.training
        pl_module.eval()
        grids = self.render(pl_module)
        pl_module.train(was_training)
        folder = Path(self.output_dir or trainer.default_root_dir) / "images"
        for name, grid in grids.items():
            path = save_png(grid, folder / f"epoch_{epoch:03d}_{name.replace('/', '_')}.png")
            if name == "samples":
                log.info(f"Sample grid after epoch {epoch}: {path}")
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # W&B
                for name, grid in grids.items():
                    logger.log_image(key=f"images/{name}", images=[grid], step=trainer.global_step)

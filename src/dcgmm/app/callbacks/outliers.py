"""Outlier detection (docs/design.md section 4): score the held-out class(es), or another dataset, against
the test inliers by the top GMM layer's objective and report the exact ROC AUC.

Protocol (``experiment=outliers_mnist``): train on every class but the held-out ones (the config
derives ``data.classes`` from ``outlier.held_out``), so the test set seen by ``trainer.test`` holds
only inliers; this callback scores those test batches as they pass, then scores the held-out
classes' test images (or, cross-dataset, every test image of ``outlier.dataset``) and logs
``test/auroc``. The outlier score is minus the typicality (see :mod:`dcgmm.core.scoring`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torchmetrics.classification import BinaryROC

from dcgmm.app.resolvers import held_out_list
from dcgmm.core.metrics import auroc_metric
from dcgmm.core.scoring import EvalOutputs, batched_typicalities, layer_typicalities, parse_outlier_score
from dcgmm.data import DataError, canonical_name, load_dataset
from dcgmm.data.datamodule import pixel_tensor
from dcgmm.data.sources import dataset_info
from dcgmm.errors import ConfigError

log = logging.getLogger("dcgmm")

ROC_PNG = "outliers_roc.png"
RESULT_JSON = "outliers.json"
NOISE = "noise"  # an extra outlier set: uniform-noise images of the training images' shape
NOISE_IMAGES = 10_000


class OutlierDetection(Callback):
    """ROC AUC of outliers against the test set, by the top GMM layer's objective.

    Logs ``test/auroc`` (exact, torchmetrics ``BinaryAUROC`` with no thresholds; outliers are the
    positive class, scored by minus the typicality chosen by ``score``), and side by side the AUROC
    of every typicality of :func:`dcgmm.core.scoring.layer_typicalities`: ``test/auroc/top``,
    ``test/auroc/sum``, ``test/auroc/L<i>`` per GMM layer; for every ``extra`` outlier set
    ``test/auroc_<set>/<score>`` (the same test inliers against that set). Writes
    ``outliers_roc.png`` (the ROC curve of ``score``) and ``outliers.json`` (every AUROC, classes,
    counts, mean typicality) to ``output_dir``, and logs the curve to W&B when a W&B logger is active.

    Args:
        held_out: class id(s) of the training dataset left out of training; their test images are
            the outliers. Ignored in cross-dataset mode.
        dataset: ``None`` (or the training dataset's name): held-out classes are the outliers. Another
            dataset's name: cross-dataset mode, all its test images are the outliers and training
            uses every class.
        train_dataset: name of the dataset the model trains on (``${data.name}``).
        data_dir, local_dir, download: where to load the outlier images from (``local_dir`` only
            for the training dataset itself), see :func:`dcgmm.data.load_dataset`.
        output_dir: folder of the PNG and JSON files (``None``: write nothing).
        batch_size: outlier images scored per batch.
        max_outliers: score at most this many outlier images (``None``: all; under
            ``fast_dev_run`` as many as there were test inliers).
        score: the typicality of ``test/auroc``: ``"top"`` (the top GMM layer's objective, as
            published), ``"sum"`` (the sum of every GMM layer's), or ``"layer:<i>"``.
        extra: further outlier sets scored against the same inliers: names of datasets of the
            same image shape (all their test images) and/or ``"noise"`` (10,000 uniform-noise images).
    """

    def __init__(
        self,
        held_out: int | Sequence[int] | None = 0,
        dataset: str | None = None,
        train_dataset: str = "mnist",
        data_dir: str = "data",
        local_dir: str | None = None,
        download: bool = True,
        output_dir: str | None = None,
        batch_size: int = 1000,
        max_outliers: int | None = None,
        score: str = "top",
        extra: Sequence[str] | None = None,
    ) -> None:
        parse_outlier_score(score)  # one-line error for an unknown score, before anything loads
        self.score = str(score)
        self.train_dataset = canonical_name(train_dataset)
        self.dataset = canonical_name(dataset) if dataset is not None else self.train_dataset
        self.cross = self.dataset != self.train_dataset
        num_classes = len(dataset_info(self.train_dataset).class_names)
        held = held_out_list(held_out)
        if self.cross:
            if held:
                log.info(f"cross-dataset outliers ({self.dataset}): training uses every class, outlier.held_out={held} is not used")
            self.held_out: list[int] = []
            self.outlier_classes = None  # every class of the other dataset
        else:
            bad = [c for c in held if not 0 <= c < num_classes]
            if bad:
                raise ConfigError(
                    f"outlier.held_out={held_out}: class {bad[0]} is not a class of {self.train_dataset} "
                    f"(class ids 0..{num_classes - 1})"
                )
            if not held:
                raise ConfigError(
                    "the outlier set is empty: hold out a class (outlier.held_out=0) or name another "
                    "dataset for cross-dataset outliers (outlier.dataset=fashion)"
                )
            if len(set(held)) == num_classes:
                raise ConfigError(f"outlier.held_out={held_out} holds out every class of {self.train_dataset}; nothing is left to train on")
            self.held_out = sorted(set(held))
            self.outlier_classes = self.held_out
        if int(batch_size) < 1 or (max_outliers is not None and int(max_outliers) < 1):
            raise ConfigError(f"outlier batch_size={batch_size} and max_outliers={max_outliers} must be >= 1")
        self.data_dir, self.download = str(data_dir), bool(download)
        self.local_dir = None if self.cross or local_dir is None else str(local_dir)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.batch_size = int(batch_size)
        self.max_outliers = None if max_outliers is None else int(max_outliers)
        extra = [NOISE if str(e) == NOISE else canonical_name(e) for e in (extra or [])]
        # the main outlier set and the training dataset itself are no extra sets
        self.extra = [e for e in dict.fromkeys(extra) if e != self.train_dataset and not (self.cross and e == self.dataset)]
        self.images: torch.Tensor | None = None  # outlier images, float32 (N, C, H, W) in [0, 1]
        self.extra_images: dict[str, torch.Tensor] = {}
        self.result: dict | None = None  # the last test's result (also written to outliers.json)
        self._key: str | None = None  # the layer_typicalities key of ``score``
        self._aurocs: dict[tuple[str, str], object] = {}  # (outlier set, score key) -> BinaryAUROC
        self._roc = None
        self._inliers = 0
        self._inlier_sum = 0.0

    # ------------------------------------------------------------------ set-up (before training)
    def load_outliers(self) -> torch.Tensor:
        """The outlier images: the held-out classes' test images, or all test images of the other
        dataset; float32 ``(N, 1, H, W)`` in [0, 1]. A one-line ``DataError`` when there are none."""
        arrays = load_dataset(self.dataset, self.data_dir, self.local_dir, self.download)
        x, y = arrays["test_x"], arrays["test_y"]
        if self.outlier_classes is not None:
            x = x[np.isin(y, self.outlier_classes)]
        if len(x) == 0:
            what = "" if self.outlier_classes is None else f" of the held-out classes {self.outlier_classes}"
            raise DataError(f"the outlier set is empty: the {self.dataset} test split has no images{what}")
        return as_images(x)

    def load_extra(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """An extra outlier set: uniform noise of ``shape`` (seeded), or another dataset's test images."""
        if name == NOISE:
            return torch.rand(NOISE_IMAGES, *shape, generator=torch.Generator().manual_seed(0))
        x = load_dataset(name, self.data_dir, None, self.download)["test_x"]
        return as_images(x)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._key = parse_outlier_score(self.score, pl_module.stack)  # one-line error before training
        if not self.cross and trainer.datamodule is not None:
            classes = getattr(trainer.datamodule, "classes", None)
            overlap = sorted(set(self.held_out) if classes is None else set(classes) & set(self.held_out))
            if overlap:
                shown = "null" if classes is None else list(classes)
                raise ConfigError(
                    f"data.classes={shown} includes the held-out class(es) {overlap}; drop the data.classes "
                    "override (the outlier config derives it from outlier.held_out)"
                )
        expected = tuple(pl_module.stack.input_shape)
        for name in [self.dataset, *self.extra]:  # before any image is read: the registry knows the shapes
            if name != NOISE and tuple(dataset_info(name).image_shape) != expected:
                raise ConfigError(
                    f"outlier set {name} has images of shape {list(dataset_info(name).image_shape)}, the model expects "
                    f"{list(expected)}; pick a dataset of the same shape (outlier.dataset, outlier.extra)"
                )
        if self.images is None:
            self.images = self.load_outliers()
        for name in self.extra:
            if name not in self.extra_images:
                self.extra_images[name] = self.load_extra(name, expected)
        for name, images in [(self.dataset, self.images), *self.extra_images.items()]:
            if tuple(images.shape[1:]) != expected:
                raise DataError(f"outlier images of {name} have shape {list(images.shape[1:])}, the model expects {list(expected)}")

    # ------------------------------------------------------------------ test
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._key = parse_outlier_score(self.score, pl_module.stack)
        keys = [f"L{layer.index}" for layer in pl_module.stack.gmm_layers] + ["top", "sum"]
        with torch.inference_mode(False):
            self._aurocs = {(name, key): auroc_metric().to(pl_module.device) for name in self.sets for key in keys}
            self._roc = BinaryROC(thresholds=None, normalization=None).to(pl_module.device)
        self._inliers, self._inlier_sum = 0, 0.0

    @property
    def sets(self) -> list[str]:
        """Names of the outlier sets: the main one first, then the extra ones."""
        return [self.dataset if self.cross else "held_out", *self.extra]

    def _update(self, typical: dict[str, torch.Tensor], outlier_set: str | None) -> None:
        """Add inliers (``outlier_set=None``: to every set's metrics) or one set's outliers."""
        for (name, key), metric in self._aurocs.items():
            if outlier_set is None or name == outlier_set:
                metric.update(-typical[key], torch.full_like(typical[key], int(outlier_set is not None), dtype=torch.long))
        if outlier_set in (None, self.sets[0]):
            self._roc.update(-typical[self._key], torch.full_like(typical[self._key], int(outlier_set is not None), dtype=torch.long))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        with torch.no_grad():  # the test step's pass when it returned it (EvalOutputs), else one here
            typical = outputs.typicalities if isinstance(outputs, EvalOutputs) else layer_typicalities(pl_module.stack, batch[0])
        self._update(typical, None)
        self._inliers += typical["top"].numel()
        self._inlier_sum += float(typical[self._key].sum())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.images is None:  # trainer.test without setup through this trainer
            self.images = self.load_outliers()
        limit = self.max_outliers
        if trainer.fast_dev_run:
            limit = min(limit or self._inliers, self._inliers)
        outlier_sets = {self.sets[0]: self.images, **{n: self.extra_images[n] for n in self.extra}}
        counts, mean_typical = {}, {}
        for name, images in outlier_sets.items():
            images = images[:limit] if limit else images
            shard = images[trainer.global_rank :: trainer.world_size]  # every process scores its share
            typical = batched_typicalities(pl_module.stack, shard, self.batch_size)
            if typical:
                self._update(typical, name)
                mean_typical[name] = float(typical[self._key].mean())
            counts[name] = len(images)
        if self._inliers == 0 or counts[self.sets[0]] == 0:
            raise DataError(f"outlier AUROC needs inliers and outliers, got {self._inliers} test inliers and {counts[self.sets[0]]} outliers")
        aurocs = {name: {key: float(metric.compute()) for (n, key), metric in self._aurocs.items() if n == name} for name in self.sets}
        main = aurocs[self.sets[0]]
        fpr, tpr, _ = self._roc.compute()
        values = {"test/auroc": torch.tensor(main[self._key])}
        for name in self.sets:
            prefix = "test/auroc" if name == self.sets[0] else f"test/auroc_{name}"
            values.update({f"{prefix}/{key}": torch.tensor(value) for key, value in aurocs[name].items()})
        pl_module.log_values(values)  # on the axis of SGD steps (DCGMMModule.log_values)
        self.result = dict(
            auroc=main[self._key],
            score=self.score,
            score_meaning="minus the typicality (the chosen GMM layer objective per image, mean over positions; higher = more typical)",
            aurocs=aurocs,
            train_dataset=self.train_dataset,
            inlier_classes=None if getattr(trainer.datamodule, "classes", None) is None else list(trainer.datamodule.classes),
            outlier_dataset=self.dataset,
            outlier_classes=self.outlier_classes,
            extra=self.extra,
            inliers=self._inliers,
            outliers=counts[self.sets[0]],
            extra_outliers={n: counts[n] for n in self.extra},
            mean_inlier_typicality=self._inlier_sum / max(self._inliers, 1),
            mean_outlier_typicality=mean_typical.get(self.sets[0]),
        )
        extra = "".join(f", {n}: {aurocs[n][self._key]:.4f}" for n in self.extra)
        log.info(f"outliers: AUROC {main[self._key]:.4f} by score {self.score} (sum {main['sum']:.4f}{extra}) ({self.describe()})")
        self._write(trainer, fpr.cpu().numpy(), tpr.cpu().numpy())
        self._aurocs, self._roc = {}, None

    def describe(self) -> str:
        if self.cross:
            return f"trained on {self.train_dataset}, outliers: {self.dataset} test images"
        return f"trained on {self.train_dataset} without classes {self.held_out}, outliers: their test images"

    @rank_zero_only
    def _write(self, trainer: L.Trainer, fpr: np.ndarray, tpr: np.ndarray) -> None:
        if self.output_dir is None:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        png = self.output_dir / ROC_PNG
        save_roc_png(fpr, tpr, self.result["auroc"], png, title=self.describe())
        self.result["roc_png"] = str(png)
        (self.output_dir / RESULT_JSON).write_text(json.dumps(self.result, indent=2) + "\n")
        log_roc_to_wandb(trainer, fpr, tpr, png)


def as_images(pixels: np.ndarray) -> torch.Tensor:
    """uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` -> float32 ``(N, C, H, W)`` in [0, 1], as the
    data module makes them."""
    return pixel_tensor(pixels).to(torch.float32).div_(255.0)


def save_roc_png(fpr: np.ndarray, tpr: np.ndarray, auroc: float, path: Path, title: str = "") -> None:
    """Plot a ROC curve to a PNG (matplotlib's Agg canvas: no display, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=1.5, label=f"AUROC = {auroc:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlim=(0, 1), ylim=(0, 1.005), xlabel="false positive rate (inliers flagged)", ylabel="true positive rate (outliers found)")
    ax.set_title(title, fontsize=8)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def log_roc_to_wandb(trainer: L.Trainer, fpr: np.ndarray, tpr: np.ndarray, png: Path, max_points: int = 1000) -> None:
    """Log the ROC curve (a W&B line plot and the PNG) to every active W&B logger."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        try:
            import wandb

            keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), max_points)).round().astype(int))
            table = wandb.Table(data=[[float(fpr[i]), float(tpr[i])] for i in keep], columns=["fpr", "tpr"])
            logger.experiment.log(
                {
                    "test/roc": wandb.plot.line(table, "fpr", "tpr", title="ROC of outlier detection"),
                    "test/roc_png": wandb.Image(str(png)),
                }
            )
        except Exception as err:  # a logging side channel must not lose the run's results
            log.warning(f"could not log the ROC curve to W&B: {type(err).__name__}: {err}")

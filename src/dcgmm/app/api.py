"""A scikit-learn style interface to DCGMM for notebooks and scripts (no Hydra config files).

:class:`DCGMMEstimator` builds a model from a topology name (``conf/model/<name>.yaml``, composed
as ``model=<name>`` with override strings, see :mod:`dcgmm.app.config`), a list of layer dicts or a model config mapping, trains it with a Lightning
``Trainer`` on an array or a ``LightningDataModule``, and gives batched scores, cluster ids, class
predictions, samples and prototypes::

    from dcgmm.app.api import DCGMMEstimator

    est = DCGMMEstimator("dcgmm2", seed=0)               # topology B of the paper
    est.fit(x_train, y_train, epochs=2)                  # uint8 (N, 28, 28) or floats in [0, 1]
    typicality = est.score_samples(x_test)               # higher = more typical
    images = est.sample(16, sharpening=True)             # (16, 1, 28, 28) in [0, 1]
    est.save("model.ckpt")                               # readable by sample.py / evaluate.py

Conventions
-----------
* Images: a tensor or array ``(N, C, H, W)``, ``(N, H, W)`` (one channel) or ``(N, C*H*W)`` that
  matches the model's ``input_shape``; ``uint8`` pixels (0..255, divided by 255) or floats in
  ``[0, 1]``. Anything else is a one-line :class:`~dcgmm.errors.ConfigError`.
* Results are torch tensors on the CPU (``.numpy()`` gives arrays); inference runs in batches of
  ``batch_size`` images under ``torch.no_grad`` on the estimator's ``device``.
* Layer indices (``layer=``) are positions in the stack as printed by :meth:`summary`.
* An untrained estimator is a valid model (every GMM layer at its initialisation: uniform weights,
  means near 0), so scores, cluster ids, samples and prototypes work before :meth:`fit`; only the
  classifier refuses to predict (and to drive conditional sampling) until it has been trained
  with labels. :attr:`is_fitted` tells whether the model has been trained or loaded.
* :meth:`fit` continues from the current parameters and annealing state (sigma, learning rate):
  calling it twice trains for the sum of the epochs. Build a new estimator to start over.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from dcgmm.app import pretrained
from dcgmm.app.checkpoints import load_module
from dcgmm.app.config import TOPOLOGY_ALIASES, known_topologies, load_topology, module_arguments
from dcgmm.app.locations import conf_dir
from dcgmm.app.module import DCGMMModule
from dcgmm.core.sampling import Sampler, SamplingOptions, missing_pixels
from dcgmm.core.scoring import EvalOutputs
from dcgmm.data.arrays import as_images, as_labels, is_int, positive_int
from dcgmm.data.datamodule import ArrayDataModule
from dcgmm.errors import ConfigError
from dcgmm.training.runtime import exact_float32

__all__ = ["DCGMMEstimator", "TOPOLOGY_ALIASES", "conf_dir", "known_topologies", "load_topology"]  # all but the first from dcgmm.app.config

CHECKPOINT_KEY = "dcgmm_estimator"  # extra entry of the checkpoints this class writes
_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


# ------------------------------------------------------------------------------- callbacks
class _History(Callback):
    """Appends one dict of epoch metrics per training epoch to ``history``.

    Lightning logs a module's epoch metrics after the callbacks' ``on_train_epoch_end``, so an
    epoch is recorded at the start of the next one and, for the last epoch, at the end of training.
    """

    def __init__(self, history: list[dict], first_epoch: int) -> None:
        self.history, self.first_epoch = history, first_epoch
        self.started = self.recorded = 0

    def _record(self, trainer) -> None:
        values = {key: float(value) for key, value in trainer.callback_metrics.items()}
        self.history.append({"epoch": self.first_epoch + self.recorded, **_epoch_values(values)})
        self.recorded += 1

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.started > self.recorded:
            self._record(trainer)
        self.started += 1

    def on_train_end(self, trainer, pl_module) -> None:
        if self.started > self.recorded:
            self._record(trainer)


def _epoch_values(values: dict[str, float]) -> dict[str, float]:
    """The metrics of one epoch: epoch means of the training losses (``train/loss_epoch`` ->
    ``train/loss``), the layers' current sigma and learning rate, and the validation metrics."""
    out = {}
    for key, value in values.items():
        if not key.startswith("train/"):
            out[key] = value
        elif key.endswith("_epoch"):
            out[key[: -len("_epoch")]] = value
        elif key.endswith(("/sigma", "/lr")):
            out[key] = value
    return out


@contextlib.contextmanager
def _quiet_trainer():
    """Hide Lightning's start-up lines (GPU/TPU available, ...), its advice to use DataLoader
    workers (in-memory tensors are fastest with none) and notices that do not apply here."""
    logger = logging.getLogger(_RANK_ZERO_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*but have no `val_dataloader`.*")
            warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")  # a Lightning/torch version notice
            yield
    finally:
        logger.setLevel(level)


# ------------------------------------------------------------------------------- the estimator
class DCGMMEstimator:
    """A DCGMM as a scikit-learn style estimator (see the module docstring for the conventions).

    Args:
        topology: a config name from ``conf/model/`` (``"flat_gmm"``, ``"dcgmm2"``, ...; the paper's
            letters ``"A"``-``"G"`` work too), the path of such a YAML file, a list of layer dicts
            (``[{"kind": "folding", "kernel_size": 28}, {"kind": "gmm", "K": 25}]``) or a model
            config mapping with a ``layers`` list.
        input_shape: ``(C, H, W)`` of the images (default: the config's, else ``(1, 28, 28)``).
        classifier: keep the topology's classifier layer (``False`` drops it).
        overrides: the command line's override strings, e.g. ``["model.layers.1.K=64"]`` (the
            ``model.`` prefix may be left out); applied to the composed topology config exactly as
            ``python train.py model=<topology> model.layers.1.K=64`` would.
        layer_overrides: the same per layer as a mapping, ``{stack index: {key: value}}``, e.g.
            ``{1: {"K": 64}}``; turned into the override strings ``model.layers.1.K=64``.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        seed: seeds the parameter initialisation, and the shuffling and ``val`` split of :meth:`fit` on
            arrays (without touching torch's global random state); ``None``: torch's global random
            state. A data module shuffles with its own seed.
        **options: model-wide values of :class:`~dcgmm.app.module.DCGMMModule`: ``K``, ``lr``,
            ``lr_min``, ``lambda_mu``, ``lambda_sigma``, ``lambda_pi``, ``mode``, ``loss``,
            ``anneal``, ``precision_max``, ``optimizer``, ``compile``. Like ``model.K=...``, a
            model-wide value reaches only the GMM layers whose spec does not set it (the topology
            files of the deep models set K per layer: use ``overrides``).

    Attributes:
        module: the :class:`~dcgmm.app.module.DCGMMModule` (``module.stack`` is the layer stack).
        history_: one dict of epoch metrics per training epoch (``train/loss``, ``val/loss``, ...).
        is_fitted: trained by :meth:`fit` or loaded from a checkpoint.
    """

    def __init__(
        self,
        topology: str | os.PathLike | Sequence[Mapping] | Mapping = "flat_gmm",
        *,
        input_shape: Sequence[int] | None = None,
        classifier: bool = True,
        overrides: Sequence[str] = (),
        layer_overrides: Mapping[int, Mapping] | None = None,
        device: str | torch.device = "auto",
        seed: int | None = None,
        **options: Any,
    ) -> None:
        if seed is not None and not is_int(seed):
            raise ConfigError(f"seed={seed!r} must be an integer or None")
        self.seed = None if seed is None else int(seed)
        self.device = self._resolve_device(device)
        self.topology, config = module_arguments(topology, input_shape, classifier, layer_overrides, options, overrides)
        with self._seeded(self.seed):
            module = DCGMMModule(**config)
        self._attach(module, fitted=False, classifier_fitted=False)

    # ------------------------------------------------------------------------- construction
    @classmethod
    def from_module(cls, module: DCGMMModule, *, device: str | torch.device = "auto", fitted: bool = True) -> DCGMMEstimator:
        """Wrap an existing module, e.g. the ``model`` returned by :func:`dcgmm.app.tasks.train`."""
        if not isinstance(module, DCGMMModule):
            raise ConfigError(f"from_module needs a DCGMMModule, got {type(module).__name__}")
        estimator = cls.__new__(cls)
        estimator.seed, estimator.device, estimator.topology = None, cls._resolve_device(device), "custom"
        estimator._attach(module, fitted=fitted, classifier_fitted=fitted and module.stack.classifier is not None)
        return estimator

    def _attach(self, module: DCGMMModule, fitted: bool, classifier_fitted: bool) -> None:
        self.module = module.to(self.device).eval()
        self.is_fitted = bool(fitted)
        self.classifier_fitted = bool(classifier_fitted)
        self.history_: list[dict] = []
        self._trainer: L.Trainer | None = None
        self._epochs = 0

    @staticmethod
    def _resolve_device(device: str | torch.device) -> torch.device:
        if str(device) == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"device={device!r} is not a torch device; use 'auto', 'cpu' or 'cuda'") from None
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but no CUDA GPU is available here; use device='cpu' (or 'auto')")
        return resolved

    @staticmethod
    @contextlib.contextmanager
    def _seeded(seed: int | None):
        """Run with torch's global RNG seeded, restoring its state afterwards (no-op for None)."""
        if seed is None:
            yield
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    # ------------------------------------------------------------------------- properties
    @property
    def stack(self):
        """The :class:`~dcgmm.core.model.DCGMM` layer stack."""
        return self.module.stack

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.stack.input_shape)

    @property
    def has_classifier(self) -> bool:
        return self.stack.classifier is not None

    @property
    def is_pixel_density(self) -> bool:
        """True when :meth:`log_likelihood` is defined (one GMM layer over the pixels, e.g. the flat GMM)."""
        return self.stack.is_pixel_density

    def __repr__(self) -> str:
        gmm = ", ".join(f"{layer.name}(K={layer.K})" for layer in self.stack.gmm_layers)
        state = "fitted" if self.is_fitted else "not fitted"
        return f"DCGMMEstimator(topology={self.topology!r}, input_shape={list(self.input_shape)}, {gmm}, device={self.device}, {state})"

    def summary(self) -> str:
        """A text table of the layers (output shapes, parameters, multiply-adds per image)."""
        head = (
            f"DCGMMEstimator: topology {self.topology}, input {list(self.input_shape)}, device {self.device}, "
            f"{'fitted' if self.is_fitted else 'not fitted'}"
            + (f" ({self._epochs} epochs here)" if self._epochs else "")
        )
        if self.has_classifier:
            head += ", classifier " + ("trained" if self.classifier_fitted else "untrained (fit with labels y)")
        return head + "\n" + self.stack.summary_table()

    # ------------------------------------------------------------------------- input checks
    def _images(self, X, what: str = "X") -> torch.Tensor:
        """``X`` as float32 images ``(N, C, H, W)`` in ``[0, 1]`` on the CPU (:func:`dcgmm.data.arrays.as_images`)."""
        return as_images(X, self.input_shape, what)

    def _labels(self, y, n: int) -> torch.Tensor:
        return as_labels(y, n, self.stack.classifier.num_classes if self.has_classifier else None)

    def _gmm_index(self, layer: int | None, what: str = "layer") -> int:
        gmm = [g.index for g in self.stack.gmm_layers]
        if layer is None:
            return gmm[-1]
        if not is_int(layer) or int(layer) not in gmm:
            raise ConfigError(f"{what}={layer!r} is not a gmm layer; gmm layers (stack indices): {gmm}")
        return int(layer)

    # ------------------------------------------------------------------------- training
    def fit(
        self,
        X,
        y=None,
        *,
        epochs: int = 1,
        batch_size: int = 100,
        val=None,
        progress_bar: bool = False,
        **trainer_kwargs: Any,
    ) -> DCGMMEstimator:
        """Train the model (layer-local SGD with annealing, as ``train.py`` does) and return ``self``.

        Args:
            X: images (see the module docstring), or a ``LightningDataModule`` (e.g.
                :class:`~dcgmm.data.ImageDataModule`) whose batches are ``(images, labels)``.
            y: class ids ``(N,)`` for the classifier. Without labels the GMM layers train and
                the classifier stays as it is (untrained, unless trained before).
            epochs: passes over the data (``Trainer(max_epochs=epochs)``).
            batch_size: images per SGD step (array input; a data module has its own).
            val: validation data for the per-epoch ``val/*`` metrics in :attr:`history_`: a
                fraction (``0.1``) or a count of ``X`` held out (seeded by ``seed``), images, or
                ``(images, labels)``. ``None``: no validation (a data module brings its own split).
            progress_bar: show Lightning's progress bar.
            **trainer_kwargs: passed to ``lightning.Trainer`` and override its defaults here:
                ``logger=False``, ``enable_checkpointing=False``, ``enable_model_summary=False``,
                ``num_sanity_val_steps=0``, the estimator's device (e.g. ``limit_train_batches=10``,
                ``callbacks=[...]``, ``logger=CSVLogger("logs")``).
        """
        if not is_int(epochs) or int(epochs) < 1:
            raise ConfigError(f"epochs={epochs!r} must be a positive integer")
        batch_size = positive_int(batch_size, "batch_size")
        group = int(self.module.hparams.get("steps_per_call", 1))  # SGD steps per call of Lightning's loop
        if isinstance(X, L.LightningDataModule):
            if y is not None or val is not None:
                raise ConfigError("fit(datamodule) takes its labels and validation split from the data module; drop y= and val=")
            datamodule, steps = X, None
        else:
            x = self._images(X)
            if len(x) == 0:
                raise ConfigError("X holds no images; fit needs at least one")
            labels = self._labels(y, len(x)) if y is not None else None  # None: unlabelled batches (x, None)
            # train.py's loaders over the arrays (dcgmm.data.ArrayDataModule): the order a function
            # of (seed, epoch), a later fit going on with the next seeds, the same validation split
            order_seed = None if self.seed is None else self.seed + self._epochs
            datamodule = ArrayDataModule(x, labels, **self._validation(len(x), val), batch_size=batch_size, eval_batch_size=max(batch_size, 1000),
                                         seed=self.seed or 0, shuffle_seed=order_seed)
            steps = math.ceil(len(datamodule.dataset("train")) / batch_size)
            limit = trainer_kwargs.get("limit_train_batches")
            steps = min(steps, int(limit)) if is_int(limit) and int(limit) > 0 else steps
        shape = getattr(datamodule, "image_shape", None)
        if shape is not None and tuple(int(v) for v in shape) != self.input_shape:
            raise ConfigError(f"the data module has images of shape {list(shape)}, the model expects input_shape={list(self.input_shape)}")
        labelled = datamodule.dataset("train").y is not None if isinstance(datamodule, ArrayDataModule) else True

        user_callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
        options = dict(
            max_epochs=int(epochs), logger=False, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=bool(progress_bar), num_sanity_val_steps=0,
            use_distributed_sampler=False,  # the data modules split the seeded order over processes themselves
        )
        if self.device.type == "cuda":
            options.update(accelerator="gpu", devices=[self.device.index or 0])
        else:
            options.update(accelerator="cpu", devices=1)
        if steps is not None:  # on the ends of calls of steps_per_call in every epoch (else: once an epoch)
            every = min(50, steps)
            options["log_every_n_steps"] = steps if group > 1 and (every % group or steps % group) else every
            if val is None:
                options["limit_val_batches"] = 0  # no validation data: no validation loop
        options.update(trainer_kwargs)
        options["callbacks"] = [*user_callbacks, _History(self.history_, self._epochs)]

        classifier = self.stack.classifier
        with _quiet_trainer():  # without labels the module trains the GMM layers only (classifier untouched)
            trainer = L.Trainer(**options)
            self.module.train()
            trainer.fit(self.module, datamodule=datamodule)
        self._trainer = trainer
        self._epochs += int(trainer.current_epoch)
        self.is_fitted = True
        self.classifier_fitted = self.classifier_fitted or (labelled and classifier is not None)
        self.module.to(self.device).eval()
        return self

    def _validation(self, n: int, val) -> dict:
        """``val`` of :meth:`fit` as :class:`~dcgmm.data.ArrayDataModule` arguments: ``val_size`` (a
        fraction or a count of the ``n`` images) or ``val`` (images, labels)."""
        if val is None:
            return {}
        if isinstance(val, float) and not isinstance(val, bool):
            if not 0.0 < val < 1.0:
                raise ConfigError(f"val={val} as a fraction must lie in (0, 1)")
            count = round(val * n)
        elif is_int(val):
            count = int(val)
        elif isinstance(val, tuple) and len(val) == 2:
            images = self._images(val[0], "val images")
            return {"val": (images, self._labels(val[1], len(images)) if val[1] is not None else None)}
        else:
            return {"val": (self._images(val, "val"), None)}
        if not 1 <= count < n:
            raise ConfigError(f"val={val} holds out {count} of {n} images; hold out at least 1 and leave at least 1 to train on")
        return {"val_size": count}

    # ------------------------------------------------------------------------- inference
    @torch.no_grad()
    def _map(self, X, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> torch.Tensor:
        """``fn`` applied to batches of images on the device; results concatenated on the CPU."""
        images = self._images(X)
        batch_size = positive_int(batch_size, "batch_size")
        self.module.to(self.device).eval()
        with exact_float32():  # reported scores in IEEE float32, never TF32 (dcgmm.training.runtime)
            parts = [fn(images[i : i + batch_size].to(self.device)).cpu() for i in range(0, len(images), batch_size)]
            if parts:
                return torch.cat(parts)
            # no images: run one empty-shaped batch through to get the result's trailing shape
            return fn(images[:0].to(self.device)).cpu()

    def score_samples(self, X, batch_size: int = 1000) -> torch.Tensor:
        """Typicality of each image: the top GMM layer's objective, ``(N,)`` float32, higher = more typical.

        Units: nats per position of the top GMM layer, i.e. the mean over its ``H x W`` positions of
        the (annealed, max-component) log-density bound ``max_k sum_j g_kj l_j(x)`` of the layer's
        input there (``loss: logsumexp``: the exact ``log sum_k exp l_k(x)``). For the flat GMM and
        for topologies whose top layer sees the whole image there is one position, so it is nats per
        image. It is minus the top layer's ``loss`` that training logs (averaged over images), and
        the score that the outlier evaluation uses (its negative is the outlier score).
        """
        top = self.stack.top_gmm.index
        return self._map(X, lambda xb: EvalOutputs.of(self.stack, xb, until=top).typicality, batch_size)

    def score(self, X, y=None, batch_size: int = 1000) -> float:
        """Mean of :meth:`score_samples` over ``X`` (``y`` is ignored, as in scikit-learn's mixtures)."""
        return float(self.score_samples(X, batch_size).mean())

    def log_likelihood(self, X, batch_size: int = 1000) -> torch.Tensor:
        """Exact log-density ``log p(x)`` of each image in nats, ``(N,)`` (log-sum-exp, not the bound).

        Only for pixel-density models (:attr:`is_pixel_density`: one GMM layer over a folding that
        tiles the image, e.g. the flat GMM); deeper stacks model responsibilities, not pixels.
        """
        if not self.is_pixel_density:
            raise ConfigError(
                f"log_likelihood needs a pixel-density model (one gmm layer over the pixels, e.g. topology 'flat_gmm'); "
                f"topology {self.topology!r} is not one: use score_samples"
            )
        top = self.stack.top_gmm.index
        return self._map(X, lambda xb: EvalOutputs.of(self.stack, xb, until=top).top_log_likelihood, batch_size)

    def bits_per_dim(self, X, seed: int = 0, batch_size: int = 1000) -> torch.Tensor:
        """Bits per dimension of 8-bit images with uniform dequantisation (seeded noise), ``(N,)``:
        ``8 - log p((u8 + u) / 256) / (D ln 2)``. Pixel-density models only, see :meth:`log_likelihood`."""
        if not self.is_pixel_density:
            raise ConfigError(f"bits_per_dim needs a pixel-density model (e.g. topology 'flat_gmm'); topology {self.topology!r} is not one")
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            return self._map(X, self.module.bits_per_dim, batch_size)

    def predict(self, X, batch_size: int = 1000) -> torch.Tensor:
        """Cluster id of each image: the top GMM layer's most responsible component, ``(N,)`` int64.

        With one top-layer position this is ``argmax_k`` of the responsibilities; with several, the
        component with the largest mean responsibility over the positions.
        """
        top = self.stack.top_gmm.index
        return self._map(X, lambda xb: EvalOutputs.of(self.stack, xb, until=top).clusters, batch_size)

    def predict_proba(self, X, batch_size: int = 1000) -> torch.Tensor:
        """Responsibilities of the top GMM layer's components, averaged over its positions: ``(N, K)``."""
        top = self.stack.top_gmm.index
        return self._map(X, lambda xb: EvalOutputs.of(self.stack, xb, until=top).component_probabilities, batch_size)

    def responsibilities(self, X, layer: int | None = None, batch_size: int = 1000) -> torch.Tensor:
        """Output map of GMM ``layer`` (default: the top one): responsibilities ``(N, K, H', W')``."""
        index = self._gmm_index(layer)
        stack = self.stack
        return self._map(X, lambda xb: stack.bottom_up(xb, until=index)[0].contiguous(), batch_size)

    def _check_classifier(self, what: str) -> None:
        if not self.has_classifier:
            raise ConfigError(f"{what} needs a classifier layer; topology {self.topology!r} has none (add {{kind: classifier}} to the layers)")
        if not self.classifier_fitted:
            raise ConfigError(f"{what}: the classifier has not been trained; call fit(X, y) with labels first")

    def predict_class_proba(self, X, batch_size: int = 1000) -> torch.Tensor:
        """Class probabilities of the classifier layer: ``(N, num_classes)``."""
        self._check_classifier("predict_class_proba")
        return self._map(X, lambda xb: EvalOutputs.of(self.stack, xb).class_probabilities, batch_size)

    def predict_class(self, X, batch_size: int = 1000) -> torch.Tensor:
        """Class id predicted by the classifier layer: ``(N,)`` int64."""
        self._check_classifier("predict_class")
        return self._map(X, lambda xb: EvalOutputs.of(self.stack, xb).class_logits.argmax(dim=-1), batch_size)

    # ------------------------------------------------------------------------- sampling
    def _sampler(self, seed: int | None, **options: Any) -> Sampler:
        """A sampler with :meth:`SamplingOptions.parse` of ``options`` and a generator seeded with ``seed``."""
        parsed = SamplingOptions.parse(options)
        if seed is not None and not is_int(seed):
            raise ConfigError(f"seed={seed!r} must be an integer or None")
        generator = torch.Generator(device=self.device).manual_seed(int(seed)) if seed is not None else None
        self.module.to(self.device).eval()
        return Sampler(self.stack, parsed, generator)

    def sample(self, n: int, *, layer: int | None = None, seed: int | None = None, **options: Any) -> torch.Tensor:
        """``n`` unconditional samples ``(n, C, H, W)``, top-down from GMM ``layer`` (default: the top).

        Options (:class:`~dcgmm.core.sampling.SamplingOptions`): ``top_s=1`` (draw among the top-S
        components of each prior), ``divisor=5.0`` (standard deviations divided by it),
        ``pooling_mode="dense"``, ``clamp=True`` (clip to ``[0, 1]``), ``sharpening``: ``True``,
        or a dict such as ``{"rate": 0.1, "iterations": 300, "reconstruction": 0.05}``.
        ``seed`` makes the draw reproducible.
        """
        if not is_int(n) or int(n) < 1:
            raise ConfigError(f"n={n!r} must be a positive number of samples")
        sampler = self._sampler(seed, **options)
        return sampler.sample(int(n), top=self._gmm_index(layer)).cpu()

    def conditional(self, classes, *, confidence: float = 0.95, seed: int | None = None, **options: Any) -> torch.Tensor:
        """One sample per entry of ``classes`` (class ids), drawn top-down through the classifier:
        ``(len(classes), C, H, W)``. Options as in :meth:`sample`."""
        self._check_classifier("conditional sampling")
        if not 0.0 < float(confidence) < 1.0:
            raise ConfigError(f"confidence={confidence} must lie in (0, 1)")
        sampler = self._sampler(seed, **options)
        return sampler.conditional(torch.as_tensor(np.asarray(classes), dtype=torch.long), confidence).cpu()

    def variants(self, X, *, layer: int | None = None, seed: int | None = None, **options: Any) -> torch.Tensor:
        """Variants of real images: their responsibilities at GMM ``layer`` (default: the top) as the
        top-down prior. Options as in :meth:`sample`. Returns ``(N, C, H, W)``."""
        images = self._images(X)
        index = self._gmm_index(layer)
        sampler = self._sampler(seed, **options)
        return sampler.variants(images, index).cpu()

    def inpaint(self, X, mask="right_half", *, box=None, layer: int | None = None, seed: int | None = None, **options: Any) -> torch.Tensor:
        """Fill the missing pixels of images by variant generation (docs/design.md section 3).

        Args:
            X: images.
            mask: True (or 1) where a pixel is *missing* and is to be filled: ``(H, W)``,
                ``(C, H, W)`` or ``(N, C, H, W)``; or a preset, ``"right_half"``, ``"left_half"``,
                ``"top_half"``, ``"bottom_half"`` or ``"box"`` (the same masks as ``sample.py
                mode=inpaint``: :func:`dcgmm.core.sampling.missing_pixels`). Missing pixels are
                set to 0 before the bottom-up pass; known pixels are returned unchanged.
            box: ``[top, left, height, width]`` in pixels, for ``mask="box"``.
            layer: GMM layer whose responsibilities are the top-down prior (default: the top).
            seed, options: as in :meth:`sample`.
        Returns:
            ``(N, C, H, W)``.
        """
        images = self._images(X)
        missing = missing_pixels(mask, self.input_shape, len(images), box=box)
        index = self._gmm_index(layer)
        sampler = self._sampler(seed, **options)
        return sampler.inpaint(images, missing, index).cpu()

    def prototypes(self, layer: int | None = None, clamp: bool = True) -> torch.Tensor:
        """What each component of GMM ``layer`` (default: the top) looks like in pixel space.

        A layer right above the pixels over patches returns its means as patches ``(K, C, kh, kw)``
        (the flat GMM: whole images); a higher layer the top-down image of each component with
        every lower layer drawing its mean, ``(K, C, H, W)``.
        """
        index = self._gmm_index(layer)
        return self._sampler(None, clamp=clamp).prototypes(index).cpu()

    def variance_images(self, layer: int | None = None) -> torch.Tensor:
        """Per-component variances of GMM ``layer`` (default: the top) as maps ``(K, 1, H, W)`` on the
        grid of the input of the folding below it: pixels for a layer right above the image, the
        lower layer's positions otherwise (averaged over that map's channels)."""
        index = self._gmm_index(layer)
        with torch.no_grad():
            return self._sampler(None).variance_images(index).cpu()

    @property
    def mixture_weights(self) -> torch.Tensor:
        """Mixture weights pi of the top GMM layer: ``(K,)`` (shared mode) or ``(H*W, K)``."""
        weights = self.stack.top_gmm.weights.detach().cpu()
        return weights[0] if weights.shape[0] == 1 else weights

    # ------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write a Lightning checkpoint that :meth:`load`, :func:`dcgmm.app.checkpoints.load_module`,
        ``evaluate.py ckpt_path=...`` and ``sample.py ckpt_path=...`` read. After :meth:`fit` it is
        the last trainer's checkpoint (optimiser and loop state included)."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"topology": self.topology, "fitted": self.is_fitted, "classifier_fitted": self.classifier_fitted, "epochs": self._epochs}

        class _Meta(Callback):
            def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
                checkpoint[CHECKPOINT_KEY] = meta

        trainer = self._trainer
        if trainer is None or trainer.lightning_module is not self.module:
            with _quiet_trainer():
                trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                    enable_model_summary=False, max_epochs=0, accelerator="cpu", devices=1)
            trainer.strategy.connect(self.module)
        trainer.callbacks.append(_Meta())
        try:
            with _quiet_trainer():
                trainer.save_checkpoint(path, weights_only=False)
        finally:
            trainer.callbacks.pop()
        return path

    @classmethod
    def from_pretrained(cls, topology: str, dataset: str = "mnist", *, device: str | torch.device = "auto") -> DCGMMEstimator:
        """A model shipped in ``pretrained/`` (:mod:`dcgmm.app.pretrained`), e.g. ``("C", "mnist")``:
        its file is checked against the manifest's SHA-256 before it is loaded."""
        return cls.load(pretrained.resolve(pretrained.name_of(TOPOLOGY_ALIASES.get(topology, topology), dataset)), device=device)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "auto") -> DCGMMEstimator:
        """Rebuild an estimator from a checkpoint written by :meth:`save` or by ``train.py``."""
        module = load_module(path, map_location="cpu")
        checkpoint = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=False)
        meta = checkpoint.get(CHECKPOINT_KEY) or {}
        estimator = cls.from_module(module, device=device, fitted=bool(meta.get("fitted", True)))
        estimator.topology = meta.get("topology", "custom")
        estimator.classifier_fitted = bool(meta.get("classifier_fitted", module.stack.classifier is not None))
        estimator._epochs = int(meta.get("epochs", checkpoint.get("epoch", 0) or 0))
        return estimator

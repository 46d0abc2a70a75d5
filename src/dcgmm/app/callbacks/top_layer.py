"""Clustering scores and loss of the top GMM layer, accumulated over the test (or validation) set."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from dcgmm.core.metrics import ClusteringScores, WeightedMean, internal_indices
from dcgmm.core.scoring import EvalOutputs
from dcgmm.errors import ConfigError

STAGES = ("val", "test")


class TopLayerMetrics(Callback):
    """Logs, for every stage in ``stages``:

    * ``{stage}/cluster/purity``, ``/nmi``, ``/ari``: the top GMM layer's cluster id per image (its
      most responsible component, see :mod:`dcgmm.core.scoring`) against the labels;
    * ``{stage}/cluster/hungarian_acc``: accuracy under the best one-to-one matching of components
      to classes, only when K equals the number of classes in the data (with K > classes a
      one-to-one matching leaves components unmatched; purity is the many-to-one counterpart);
    * ``{stage}/cluster/dunn``, ``/davies_bouldin`` (``internal=True``): label-free indices of the
      same clustering of the images in pixel space, over the whole test set (the authors' code
      averages them over test batches of 100; Dunn: higher is better; Davies-Bouldin: lower is better), see :func:`dcgmm.core.metrics.internal_indices`;
    * ``{stage}/top/loss``: minus the top layer's mean objective (the same value as
      ``{stage}/L<i>_gmm/loss`` of that layer, under a name that does not depend on the topology).

    It reads the module's evaluation step's outputs (:class:`~dcgmm.core.scoring.EvalOutputs`), so it
    runs nothing itself; only for a step that returns none does it run the stack up to the top GMM
    layer. Batches without labels (``(images, None)``) give the label-free values only (the loss
    and the internal indices), not the label-based scores.

    Args:
        stages: any of ``"val"`` and ``"test"``.
        num_classes: range of the class ids; ``None``: the datamodule's ``num_classes``.
        internal: also compute the Dunn and Davies-Bouldin indices (keeps the stage's images in
            memory; the Dunn index costs all pairwise distances, about 1 s for 10,000 images).
    """

    def __init__(self, stages: list[str] | tuple[str, ...] = ("test",), num_classes: int | None = None, internal: bool = True) -> None:
        stages = [stages] if isinstance(stages, str) else list(stages)
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"callbacks.top_layer.stages={stages}: {unknown} unknown; use any of {list(STAGES)}")
        self.stages = stages
        self.num_classes = num_classes
        self.internal = bool(internal)
        self._images: list[torch.Tensor] = []
        self._ids: list[torch.Tensor] = []
        self._clusters: ClusteringScores | None = None
        self._loss: WeightedMean | None = None

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in self.stages or trainer.sanity_checking:
            self._clusters = None
            return
        num_classes = self.num_classes or getattr(trainer.datamodule, "num_classes", None)
        if not num_classes:
            raise ConfigError("TopLayerMetrics needs the number of classes: set callbacks.top_layer.num_classes")
        with torch.inference_mode(False):  # fresh states, usable by the next fit as well
            self._clusters = ClusteringScores(pl_module.stack.top_gmm.K, int(num_classes)).to(pl_module.device)
            self._loss = WeightedMean().to(pl_module.device)
        self._images, self._ids = [], []

    def _update(self, pl_module: L.LightningModule, batch, outputs=None) -> None:
        """One batch; ``outputs`` of the module's evaluation step (:class:`EvalOutputs`) when it
        returned them, else the stack is run here."""
        if self._clusters is None:
            return
        x, labels = batch[0], batch[1]
        with torch.no_grad():
            if not isinstance(outputs, EvalOutputs):
                outputs = EvalOutputs.of(pl_module.stack, x, labels, until=pl_module.stack.top_gmm.index)
            ids, typical = outputs.clusters, outputs.typicality
            if labels is not None:
                self._clusters.update(ids, labels)
            if self.internal:
                self._images.append(x.flatten(1))
                self._ids.append(ids)
            self._loss.update(-typical)

    def _end(self, pl_module: L.LightningModule, stage: str) -> None:
        if self._clusters is None:
            return
        if self._loss.update_called:
            values = {}
            if self._clusters.update_called:  # batches with labels
                values.update({f"{stage}/cluster/{name}": value.float() for name, value in self._clusters.compute().items()})
            values[f"{stage}/top/loss"] = self._loss.compute()
            if self.internal and self._images:
                images, ids = torch.cat(self._images), torch.cat(self._ids)
                if pl_module.trainer.world_size > 1:  # every process's share (same sizes: padded order)
                    images, ids = (pl_module.all_gather(t).flatten(0, 1) for t in (images, ids))
                for name, value in internal_indices(images, ids).items():
                    if value is not None:
                        values[f"{stage}/cluster/{name}"] = torch.tensor(value, dtype=torch.float32)
            pl_module.log_values(values)  # on the axis of SGD steps (DCGMMModule.log_values)
        self._clusters = self._loss = None
        self._images, self._ids = [], []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module, "val")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(pl_module, batch, outputs)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._end(pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module, "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(pl_module, batch, outputs)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._end(pl_module, "test")

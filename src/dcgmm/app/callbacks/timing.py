"""Training speed of a run: wall time of ``trainer.fit`` and training images per second."""

from __future__ import annotations

import statistics
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class TrainingSpeed(Callback):
    """Measures the cost of training, for tables and benchmarks (nothing is logged; read the
    attributes after ``trainer.fit``, e.g. from the ``callbacks`` that ``dcgmm.app.tasks.train`` returns).

    Attributes (after fit):
        fit_seconds: wall time from the start to the end of ``trainer.fit`` (training, validation,
            checkpointing).
        step_seconds: time spent inside the training steps (from ``on_train_batch_start`` to
            ``on_train_batch_end``: forward, backward, SGD step, annealing; with ``steps_per_call > 1``
            also the cutting of the call's batches, which the training step takes from the loader);
            validation excluded.
        train_images: training images processed (summed over epochs).
        train_steps: SGD steps run (each of the ``steps_per_call`` steps of a call counts).
        images_per_second: ``train_images / step_seconds``.
        epoch_seconds: wall time of each training epoch, from its start to the start of the next
            one (or the end of fit): its steps, loading the batches, the validation that follows
            it, checkpointing and every callback.
        epoch_step_seconds: the part of each epoch spent inside its training steps.
        overhead: the share of the epochs' wall time spent outside the steps, median over the
            epochs after the first (the first alone when it is the only one): ``1 - steps / wall``.

    On a CUDA device the steps are timed with CUDA events, read once per epoch (one host sync per
    epoch, none per step); on the CPU with ``time.perf_counter``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fit_seconds = 0.0
        self.step_seconds = 0.0
        self.train_images = 0
        self.train_steps = 0
        self._fit_start: float | None = None
        self._batch_start: float | None = None
        self._cuda_start = None
        self._cuda_pairs: list = []  # (start, end) CUDA events of this epoch's steps
        self.epoch_seconds: list[float] = []
        self.epoch_step_seconds: list[float] = []
        self._epoch_start: float | None = None
        self._steps_at_epoch_start = 0.0
        self._counts: tuple[int, int] | None = None  # the learner's (steps, images) at the call's start

    @property
    def images_per_second(self) -> float:
        return self.train_images / self.step_seconds if self.step_seconds > 0 else float("nan")

    @staticmethod
    def later_epochs(values: list[float]) -> list[float]:
        """Per-epoch ``values`` without the first epoch's (start-up), unless it is the only one."""
        return values[1:] or values

    @property
    def overhead(self) -> float:
        shares = self.later_epochs([1.0 - steps / wall for steps, wall in zip(self.epoch_step_seconds, self.epoch_seconds) if wall > 0])
        return statistics.median(shares) if shares else float("nan")

    def as_dict(self) -> dict:
        return dict(
            fit_seconds=self.fit_seconds, step_seconds=self.step_seconds, train_images=self.train_images,
            train_steps=self.train_steps, images_per_second=self.images_per_second,
            epoch_seconds=list(self.epoch_seconds), epoch_step_seconds=list(self.epoch_step_seconds), overhead=self.overhead,
        )

    def _close_epoch(self) -> None:
        """End the running epoch's wall-time measurement (at the next epoch's start or training's end)."""
        if self._epoch_start is not None:
            self._collect()
            self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
            self.epoch_step_seconds.append(self.step_seconds - self._steps_at_epoch_start)
            self._epoch_start = None

    def _open_epoch(self) -> None:
        self._epoch_start = time.perf_counter()
        self._steps_at_epoch_start = self.step_seconds

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._open_epoch()  # a run resumed mid-epoch gets no on_train_epoch_start for that epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_start is not None and self.step_seconds > self._steps_at_epoch_start:
            self._close_epoch()  # the previous epoch (or the rest of one resumed mid-epoch)
        self._open_epoch()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_epoch()  # before the strategy's teardown, which fit's end follows

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds = self.step_seconds = 0.0
        self.train_images = self.train_steps = 0
        self.epoch_seconds, self.epoch_step_seconds, self._epoch_start = [], [], None
        self._fit_start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._collect()
        if self._fit_start is not None:
            self.fit_seconds = time.perf_counter() - self._fit_start
            self._fit_start = None

    def _collect(self) -> None:
        """Add the elapsed time of the CUDA-timed steps (one synchronisation)."""
        if self._cuda_pairs:
            torch.cuda.synchronize()
            self.step_seconds += sum(start.elapsed_time(end) for start, end in self._cuda_pairs) / 1000.0
            self._cuda_pairs = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._collect()

    @staticmethod
    def _learner_counts(pl_module) -> tuple[int, int] | None:
        """``(steps, images)`` the module's learner has run in this fit (``None``: a module without one)."""
        learner = getattr(pl_module, "learner", None)
        return None if learner is None else (learner.steps, learner.images)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._counts = self._learner_counts(pl_module)
        if pl_module.device.type == "cuda":
            self._cuda_start = torch.cuda.Event(enable_timing=True)
            self._cuda_start.record()
        else:
            self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._cuda_start is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._cuda_pairs.append((self._cuda_start, end))
            self._cuda_start = None
        elif self._batch_start is not None:
            self.step_seconds += time.perf_counter() - self._batch_start
            self._batch_start = None
        else:
            return
        after = self._learner_counts(pl_module)
        if after is not None and self._counts is not None:  # the steps of the call (several with steps_per_call > 1)
            self.train_steps += after[0] - self._counts[0]
            self.train_images += after[1] - self._counts[1]
        else:
            self.train_steps += 1
            self.train_images += int(batch[0].shape[0])

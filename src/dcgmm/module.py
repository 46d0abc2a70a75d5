"""LightningModule: trains a DCGMM stack with layer-local SGD and per-layer annealing."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import lightning as L
import torch
from torchmetrics import MeanMetric

from dcgmm.annealing import AnnealingSchedule
from dcgmm.errors import ConfigError, TrainingDiverged
from dcgmm.layers import GMMLayer
from dcgmm.model import DCGMM

LN2 = math.log(2.0)


class DCGMMModule(L.LightningModule):
    """A DCGMM stack, its SGD optimiser and one annealing schedule per GMM layer.

    Every GMM layer maximises its own objective on a detached input; one optimiser step on the
    sum of the layer losses therefore gives each layer the gradient of its own loss alone.

    Args:
        layers: the topology, a list of layer specs (``kind`` + parameters), see :mod:`dcgmm.model`.
        input_shape: ``[C, H, W]`` of the images.
        K, lr, lr_min, lambda_mu, lambda_sigma, lambda_pi, mode, loss, anneal, precision_max:
            model-wide values for every GMM layer whose spec does not set them (``None``: the
            layer's own default).
        optimizer: a partial optimiser (Hydra ``_partial_: true``) called with the parameter
            groups; default plain SGD.
        compile: wrap the stack's bottom-up pass in ``torch.compile``.

    Logged metrics (slash names): ``train/loss`` (sum of layer losses), ``{stage}/{layer}/loss``,
    ``train/{layer}/sigma`` and ``train/{layer}/lr`` every step, ``{val,test}/loglik`` (exact
    log-likelihood of the top GMM layer per image, nats), ``{val,test}/bound`` (its max-component
    bound), and ``test/bpd`` (bits per dimension with uniform dequantisation of the 8-bit pixels,
    for stacks that are densities over pixels, e.g. the flat GMM).
    """

    def __init__(
        self,
        layers: Sequence[Mapping],
        input_shape: Sequence[int] = (1, 28, 28),
        K: int | None = None,
        lr: float = 0.011,
        lr_min: float = 0.01,
        lambda_mu: float | None = None,
        lambda_sigma: float | None = None,
        lambda_pi: float | None = None,
        mode: str | None = None,
        loss: str | None = None,
        anneal: bool | None = None,
        precision_max: float | None = None,
        optimizer: Callable | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if lr is None or lr <= 0:
            raise ConfigError(f"model.lr={lr} must be > 0; try model.lr=0.01")
        if lr_min is None or lr_min <= 0:
            raise ConfigError(f"model.lr_min={lr_min} must be > 0; try model.lr_min=0.01")
        if K is not None and (isinstance(K, bool) or int(K) < 1):
            raise ConfigError(f"model.K={K} must be >= 1")
        self.save_hyperparameters(logger=False)
        layers = [dict(spec) for spec in layers]
        gmm_defaults = dict(
            K=K, lr=lr, lr_min=min(lr_min, lr), lambda_mu=lambda_mu, lambda_sigma=lambda_sigma,
            lambda_pi=lambda_pi, mode=mode, loss=loss, anneal=anneal, precision_max=precision_max,
        )
        for index, spec in enumerate(layers):
            if spec.get("kind") == "gmm" and spec.get("K") is None and K is None:
                raise ConfigError(f"layer {index} (gmm): K is not set; set model.K or the layer's K")
        self.stack = DCGMM(layers, tuple(input_shape), gmm_defaults)
        self.schedules = {layer.index: AnnealingSchedule(**layer.schedule_options) for layer in self.stack.gmm_layers}
        self._bottom_up = torch.compile(self.stack.bottom_up) if compile else self.stack.bottom_up
        self._last_losses: dict[int, torch.Tensor] = {}
        # first global step at which each GMM layer's loss was not finite (-1: never); kept on
        # the device so that checking it costs no host sync per step
        num_gmm = len(self.stack.gmm_layers)
        self.register_buffer("nonfinite_step", torch.full((num_gmm,), -1, dtype=torch.long), persistent=False)
        # running per-layer sum of the training losses over the epoch (device tensor, no sync)
        self.register_buffer("train_loss_sum", torch.zeros(num_gmm), persistent=False)
        self._train_steps_in_epoch = 0
        self.metrics = torch.nn.ModuleDict(
            {
                f"{stage}_{name}": MeanMetric()
                for stage in ("val", "test")
                for name in ["loss", "loglik", "bound", "bpd"] + [layer.name for layer in self.stack.gmm_layers]
            }
        )

    # ------------------------------------------------------------------------------- training
    def configure_optimizers(self):
        groups = []
        for layer in self.stack.gmm_layers:
            for name, params, factor in layer.parameter_groups():
                groups.append(dict(params=params, lr=layer.lr * factor, factor=factor, layer=layer.index, name=f"{layer.name}/{name}"))
        make = self.hparams.optimizer or torch.optim.SGD
        return make(groups)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        _, scores = self._bottom_up(x)
        losses = self.stack.losses(scores)
        loss_vector = torch.stack(list(losses.values()))  # (number of GMM layers,)
        self._last_losses = losses
        self._track_nonfinite(loss_vector)
        self.train_loss_sum += loss_vector.detach()
        self._train_steps_in_epoch += 1
        total = loss_vector.sum()
        return total

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        optimizer.step(closure=optimizer_closure)
        self.stack.constrain_()  # precision clipping after every update

    def _is_log_step(self) -> bool:
        """True on the steps whose values the logger records (every ``log_every_n_steps``).

        Logging only there keeps Lightning's per-call logging cost out of the other steps;
        ``trainer.log_every_n_steps=1`` records sigma, lr and the losses at every step.
        """
        connector = getattr(self.trainer, "_logger_connector", None)
        if connector is not None and hasattr(connector, "should_update_logs"):
            return bool(connector.should_update_logs) or bool(self.trainer.fast_dev_run)
        every = max(int(self.trainer.log_every_n_steps), 1)
        return self.global_step % every == 0

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Step every layer's annealing schedule on its loss; apply new sigma / lr; log."""
        optimizer = self.optimizers(use_pl_optimizer=False)
        window_closed = False
        for index, layer_loss in self._last_losses.items():
            schedule, layer = self.schedules[index], self.stack.layers[index]
            if schedule.step(layer_loss):
                layer.set_sigma(schedule.sigma)
                for group in optimizer.param_groups:
                    if group["layer"] == index:
                        group["lr"] = schedule.lr * group["factor"]
            window_closed |= schedule.steps % schedule.window == 0
        if window_closed:
            self._raise_if_nonfinite()
        if self._is_log_step():
            values = {}
            for index, layer_loss in self._last_losses.items():
                name = self.stack.layers[index].name
                values[f"train/{name}/loss"] = layer_loss.detach()
                values[f"train/{name}/sigma"] = self.schedules[index].sigma
                values[f"train/{name}/lr"] = self.schedules[index].lr
            self.log_dict(values, on_step=True, on_epoch=False, prog_bar=False, batch_size=batch[0].shape[0])
            self.log("train/loss", outputs["loss"].detach(), on_step=True, on_epoch=False, prog_bar=True)

    def on_train_epoch_end(self) -> None:
        self._raise_if_nonfinite()  # before ModelCheckpoint saves the epoch
        if self._train_steps_in_epoch:
            means = self.train_loss_sum / self._train_steps_in_epoch  # (number of GMM layers,)
            self.log("train/loss_epoch", means.sum(), sync_dist=True)
            for layer, value in zip(self.stack.gmm_layers, means):
                self.log(f"train/{layer.name}/loss_epoch", value, sync_dist=True)
            self.train_loss_sum.zero_()
            self._train_steps_in_epoch = 0

    def _track_nonfinite(self, loss_vector: torch.Tensor) -> None:
        """Remember, on the device, the first step at which each layer's loss was NaN or inf."""
        current = self.nonfinite_step
        bad = ~torch.isfinite(loss_vector.detach()) & (current < 0)
        self.nonfinite_step = torch.where(bad, torch.full_like(current, self.global_step), current)

    def _raise_if_nonfinite(self) -> None:
        for layer, step in zip(self.stack.gmm_layers, self.nonfinite_step.tolist()):
            if step >= 0:
                raise TrainingDiverged(
                    f"{layer.name}: loss became NaN or infinite at step {step}; lower the learning rate "
                    f"(model.lr) or check the input data; no checkpoint was written after that step"
                )

    def on_validation_epoch_start(self) -> None:
        self._raise_if_nonfinite()

    # ------------------------------------------------------------------------------- evaluation
    def _evaluate(self, batch, stage: str) -> None:
        x, _ = batch
        n = x.shape[0]
        _, scores = self._bottom_up(x)
        losses = self.stack.losses(scores)
        top = scores[self.stack.top_gmm.index]
        self.metrics[f"{stage}_loss"].update(torch.stack(list(losses.values())).sum(), weight=n)
        for index, layer_loss in losses.items():
            self.metrics[f"{stage}_{self.stack.layers[index].name}"].update(layer_loss, weight=n)
        self.metrics[f"{stage}_loglik"].update(GMMLayer.log_likelihood(top))
        self.metrics[f"{stage}_bound"].update(GMMLayer.max_component_bound(top))
        if stage == "test" and self.stack.is_pixel_density:
            self.metrics["test_bpd"].update(self.bits_per_dim(x))

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Bits per dimension of 8-bit images given as ``x = u8 / 255`` in ``[0, 1]``: ``(N,)``.

        Uniform dequantisation: ``x' = (u8 + u) / 256`` with ``u ~ U[0, 1)``; the probability of the
        8-bit image is ``p(x') / 256^D``, so ``bpd = 8 - log p(x') / (D ln 2)``.
        """
        pixels = torch.round(x * 255.0)
        dequantised = (pixels + torch.rand_like(pixels)) / 256.0
        dims = x[0].numel()
        return 8.0 - self.stack.log_likelihood(dequantised) / (dims * LN2)

    def _log_metrics(self, stage: str) -> None:
        for key, metric in self.metrics.items():
            if key.startswith(stage + "_") and metric.update_called:
                name = key[len(stage) + 1 :]
                label = f"{stage}/{name}/loss" if name.startswith("L") and "_" in name else f"{stage}/{name}"
                self.log(label, metric.compute(), prog_bar=name == "loss")
                metric.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    # ------------------------------------------------------------------------------- state
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["annealing"] = {index: schedule.state_dict() for index, schedule in self.schedules.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for index, state in checkpoint.get("annealing", {}).items():
            self.schedules[int(index)].load_state_dict(state)

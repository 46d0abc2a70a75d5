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
        self.register_buffer("nonfinite_step", torch.full((len(self.stack.layers),), -1, dtype=torch.long), persistent=False)
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
        total = torch.stack(list(losses.values())).sum()
        self._track_nonfinite(losses)
        self._last_losses = losses
        self.log("train/loss", total, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        for index, layer_loss in losses.items():
            self.log(f"train/{self.stack.layers[index].name}/loss", layer_loss, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return total

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        optimizer.step(closure=optimizer_closure)
        self.stack.constrain_()  # precision clipping after every update

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Step every layer's annealing schedule on its loss; apply new sigma / lr."""
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
            self.log(f"train/{layer.name}/sigma", schedule.sigma, on_step=True, on_epoch=False)
            self.log(f"train/{layer.name}/lr", schedule.lr, on_step=True, on_epoch=False)
        if window_closed:
            self._raise_if_nonfinite()

    def _track_nonfinite(self, losses: Mapping[int, torch.Tensor]) -> None:
        step = torch.tensor(self.global_step, device=self.nonfinite_step.device)
        for index, layer_loss in losses.items():
            bad = ~torch.isfinite(layer_loss.detach()) & (self.nonfinite_step[index] < 0)
            self.nonfinite_step[index] = torch.where(bad, step, self.nonfinite_step[index])

    def _raise_if_nonfinite(self) -> None:
        steps = self.nonfinite_step.tolist()
        for index, step in enumerate(steps):
            if step >= 0:
                raise TrainingDiverged(
                    f"{self.stack.layers[index].name}: loss became NaN or infinite at step {step}; "
                    f"lower its learning rate (model.lr) or raise precision floor/ceiling (precision_max); "
                    f"no checkpoint was written after it"
                )

    def on_train_epoch_end(self) -> None:
        self._raise_if_nonfinite()  # before ModelCheckpoint saves the epoch

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

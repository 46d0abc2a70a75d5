"""LightningModule: trains a DCGMM stack with layer-local SGD and per-layer annealing."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import lightning as L
import torch

from dcgmm.app.engine_checks import GRAPH_AND_COMPILE, check_call_ends, check_loop_settings, check_resume_point
from dcgmm.core.metrics import WeightedMean
from dcgmm.core.model import DCGMM
from dcgmm.core.scoring import EvalOutputs, bits_per_dim
from dcgmm.errors import ConfigError
from dcgmm.training.annealing import Annealing, AnnealingSchedule
from dcgmm.training.graphstep import GraphEngine
from dcgmm.training.policy import check_rate, split_training
from dcgmm.training.runtime import flush_denormals, keep_freed_memory, restore_tf32, set_tf32
from dcgmm.training.step import EagerEngine, Learner, sgd_step

STAGES = ("val", "test")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class DCGMMModule(L.LightningModule):
    """A DCGMM stack, its SGD optimiser, the training policy of its learning layers and their annealing.

    Every learning layer (GMM layers, the optional classifier) reads a detached input, so one
    optimiser step on the sum of the layer losses gives each layer the gradient of its own loss
    alone. A GMM layer with ``wait = w`` starts learning after the fraction ``w`` of all training
    steps (its loss is left out of the sum and its schedule does not step until then).

    A layer spec holds the layer's math and how it learns (``lr``, ``wait``, lambdas, annealing
    overrides); :func:`dcgmm.training.policy.split_training` separates the two, so the stack holds only the
    math and the module keeps :attr:`policies` (one :class:`~dcgmm.training.policy.LayerTraining` per learning
    layer) and :attr:`annealing` (the :class:`~dcgmm.training.annealing.Annealing` component).

    Args:
        layers: the topology, a list of layer specs (``kind`` + parameters), see :mod:`dcgmm.core.model`.
        input_shape: ``[C, H, W]`` of the images.
        K, lr, lr_min, lambda_mu, lambda_sigma, lambda_pi, mode, loss, anneal, precision_max:
            model-wide values for every GMM layer whose spec does not set them (``None``: the
            layer's own default).
        optimizer: a partial optimiser (Hydra ``_partial_: true``) called with the parameter
            groups; default plain SGD.
        annealing: a partial :class:`~dcgmm.training.annealing.Annealing` (Hydra ``_partial_: true``, the
            model-wide ``sigma0``, ``sigma_min``, ``gamma``, ``window``, ``delta``) called with the
            stack and the training policy; default ``Annealing`` with its defaults.
        compile: wrap the stack's bottom-up pass in ``torch.compile``: ``false``, ``true`` (the default
            mode) or a mode name, e.g. ``"reduce-overhead"`` (CUDA graphs of the compiled pass) or
            ``"max-autotune"``.
        cuda_graph: record the whole training step (forward, backward, SGD update, clipping) once
            as a CUDA graph and replay it for every batch (:class:`dcgmm.training.graphstep.GraphedStep`):
            one launch per step instead of hundreds. Needs plain SGD and one process; on the CPU
            the same step runs without a graph.
        tf32: let the training steps' float32 matrix products and convolutions use TF32 on GPUs
            that have it (faster, about 3 decimal digits). Evaluation (validation, test, predict)
            runs in IEEE float32 either way, so reported log-likelihoods, bounds and bits/dim are
            float32 numbers (:func:`dcgmm.training.runtime.exact_float32`). No effect on the CPU.
        steps_per_call: SGD steps per call of Lightning's training loop. With ``S > 1`` the
            training step takes ``S`` batches from the loader's iterator (the loader yields plain
            batches; Lightning's ``dataloader_iter`` step flavour) and runs them as ``S`` SGD steps
            in order (:meth:`dcgmm.training.step.Learner.run`), through Lightning's manual
            optimisation: the same updates, annealing and waits as ``S = 1``, with Lightning's
            per-batch loop, hooks and logging paid once per call. ``global_step``,
            ``trainer.max_steps`` (which stops inside a call), ``trainer.limit_train_batches`` and
            the logged metrics' step axis count SGD steps (the module writes the metrics to the
            loggers itself, :meth:`log_values`). Metrics are logged, and step checkpoints written,
            after the calls that end on a multiple of ``trainer.log_every_n_steps`` /
            ``every_n_train_steps`` (keep them multiples of ``S``, with ``S`` dividing an epoch's
            batches). Settings that would count calls are refused
            (:mod:`dcgmm.app.engine_checks`). One process only.

    Logged metrics (slash names): ``{stage}/loss`` (sum of the GMM layers' losses),
    ``{stage}/L<i>_<kind>/loss`` per learning layer, ``train/L<i>_gmm/sigma`` and ``.../lr`` at every
    logged step, ``{val,test}/loglik`` (exact log-likelihood of the top GMM layer per image, nats),
    ``{val,test}/bound`` (its max-component bound), ``{val,test}/acc`` (classifier accuracy) and
    ``test/bpd`` (bits per dimension with uniform dequantisation, for stacks that are densities
    over pixels, e.g. the flat GMM).
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
        compile: bool | str = False,
        annealing: Callable | None = None,
        tf32: bool = False,
        cuda_graph: bool = False,
        steps_per_call: int = 1,
    ) -> None:
        super().__init__()
        flush_denormals()  # before torch's worker threads start, so that they inherit it
        check_rate(lr, "model.lr")
        check_rate(lr_min, "model.lr_min")
        if compile not in (False, True, None) and compile not in COMPILE_MODES:
            raise ConfigError(f"model.compile={compile!r} is unknown; use false, true or one of {', '.join(COMPILE_MODES)}")
        if cuda_graph and compile:
            raise ConfigError(GRAPH_AND_COMPILE)
        if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, int) or steps_per_call < 1:
            raise ConfigError(f"model.steps_per_call={steps_per_call!r} must be a positive integer (SGD steps per training call)")
        if K is not None and (isinstance(K, bool) or int(K) < 1):
            raise ConfigError(f"model.K={K} must be >= 1")
        self.save_hyperparameters(logger=False)
        layers = [dict(spec) if isinstance(spec, Mapping) else spec for spec in layers] if layers is not None else []
        for index, spec in enumerate(layers):
            if isinstance(spec, Mapping) and spec.get("kind") == "gmm" and spec.get("K") is None and K is None:
                raise ConfigError(f"layer {index} (gmm): K is not set; set model.K or the layer's K")
        training_defaults = dict(
            lr=lr, lr_min=lr_min, lambda_mu=lambda_mu, lambda_sigma=lambda_sigma, lambda_pi=lambda_pi, anneal=anneal
        )
        specs, self.policies = split_training(layers, training_defaults)
        self.stack = DCGMM(specs, tuple(input_shape), dict(K=K, mode=mode, loss=loss, precision_max=precision_max))
        # one annealing schedule per learning density layer, the sigma of each and its lr
        self.annealing: Annealing = (annealing or Annealing)(self.stack, self.policies)
        self._bottom_up = self.stack.bottom_up  # compiled in configure_model (a spawned process cannot pickle it)
        self.total_steps = 1  # SGD steps of this fit, for the wait fractions (set at the start of fit)
        self._tf32_outside_fit = self._tf32_outside_eval = None  # settings to restore (dcgmm.training.runtime.set_tf32)
        # model.cuda_graph or several SGD steps per call: the module runs the engine, which does
        # forward, backward and update itself (Lightning's manual optimisation)
        self.automatic_optimization = not (cuda_graph or steps_per_call > 1)
        self._steps_per_call = int(steps_per_call)
        if self._steps_per_call > 1:
            # Lightning hands a training step with a ``dataloader_iter`` argument the loader's
            # iterator (its "dataloader_iter" flavour, chosen by the signature of this attribute)
            self.training_step = self._steps_of_a_call
        self._warning_filters: list | None = None  # the process's warning filters before setup (manual optimisation)
        # the training state of a fit and the engine that runs its steps (dcgmm.training.step), made
        # at the start of every fit on the module's device
        self.learner: Learner | None = None
        self.engine: EagerEngine | GraphEngine | None = None
        # running means over an evaluation pass, with no host synchronisation per batch
        learners = self.stack.learning_layers
        names = ["loss", "loglik", "bound", "bpd"] + (["acc"] if self.stack.classifier is not None else []) + [layer.name for layer in learners]
        self.metrics = torch.nn.ModuleDict({f"{stage}_{name}": WeightedMean() for stage in STAGES for name in names})

    @property
    def schedules(self) -> dict[int, AnnealingSchedule]:
        """``{layer index: annealing schedule}`` of the learning GMM layers (the annealing component's)."""
        return self.annealing.schedules

    # ------------------------------------------------------------------------------- training
    def configure_optimizers(self):
        groups = []
        for layer in self.stack.learning_layers:
            policy = self.policies[layer.index]
            annealed = self.annealing.lr(layer.index)
            base_lr = policy.lr if annealed is None else annealed  # the annealed rate, when fit goes on
            for name, params, own in layer.parameter_groups():
                factor = own * policy.factor(name)
                groups.append(dict(params=params, lr=base_lr * factor, factor=factor, layer=layer.index, name=f"{layer.name}/{name}"))
        make = self.hparams.optimizer or torch.optim.SGD
        return make(groups)

    def setup(self, stage: str) -> None:
        # subnormal floats flushed to zero (dcgmm.training.runtime.flush_denormals; also in __init__,
        # before the data and the trainer start torch's worker threads, which inherit it)
        flush_denormals()
        # Freed tensors stay in the process: no fresh pages faulted in every step (dcgmm.training.runtime).
        keep_freed_memory()
        # Lightning warns at every step-based checkpoint under manual optimisation that it holds
        # the parameters after the step's update: so do the automatic path's checkpoints, with the
        # annealing state of the same step (docs/design.md section 2); until teardown
        if not self.automatic_optimization and self._warning_filters is None:
            self._warning_filters = list(warnings.filters)
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)
            # and that the dataloader_iter step flavour (steps_per_call > 1) is experimental: the
            # tests hold its updates, metrics, checkpoints and limits to one step per call's
            warnings.filterwarnings("ignore", message="Found `dataloader_iter` argument")

    def teardown(self, stage: str) -> None:
        if self._warning_filters is not None:
            warnings.filters[:] = self._warning_filters
            mutated = getattr(warnings, "_filters_mutated", None)  # what filterwarnings calls (resets the caches)
            if mutated is not None:
                mutated()
            self._warning_filters = None

    def configure_model(self) -> None:
        """Compile the bottom-up pass lazily (``model.compile=true``), in the process that trains."""
        mode = self.hparams.compile
        if mode and self._bottom_up == self.stack.bottom_up:
            self._bottom_up = torch.compile(self.stack.bottom_up, **({} if mode is True else {"mode": str(mode)}))

    def _training_steps(self) -> int:
        """SGD steps of this fit, for the wait fractions: Lightning's estimate (the loader yields
        one batch per SGD step, also with ``steps_per_call > 1``)."""
        estimated = self.trainer.estimated_stepping_batches
        return int(estimated) if math.isfinite(estimated) else 1

    def on_fit_start(self) -> None:
        steps = self._steps_per_call
        check_loop_settings(self.trainer, steps, manual=not self.automatic_optimization)
        self.total_steps = max(self._training_steps(), 1)  # sets up the training loader
        check_call_ends(self.trainer, steps)
        # fresh state on the module's device (a spawned strategy pickles the module into its
        # processes with CPU tensors in shared memory: reusing them would add every process's
        # losses into one buffer); the same numbers on every process, built from reduced losses
        world = self.trainer.world_size
        self.learner = Learner(
            self.stack, self.policies, self.annealing, self.total_steps, bottom_up=self._bottom_up,
            reduce=self._mean_over_processes if world > 1 else None, keep_graph=world > 1, device=self.device,
        )
        self.engine = None  # made at the first manual step, for this fit's optimiser
        # TF32 in the training steps only when asked; evaluation switches it off (_exact_evaluation)
        self._tf32_outside_fit = set_tf32(bool(self.hparams.get("tf32", False)))

    def on_train_start(self) -> None:
        check_resume_point(self.trainer, self._steps_per_call)  # the checkpoint's loop state is restored by now

    def on_fit_end(self) -> None:
        restore_tf32(self._tf32_outside_fit)
        self._tf32_outside_fit = None

    # Evaluation in IEEE float32 whatever the process-wide setting or model.tf32: the GMM log-scores
    # are products over hundreds of dimensions, and TF32 (cuDNN's default for float32
    # convolutions) would move the reported log-likelihoods (docs/design.md section 6).
    def _exact_evaluation(self) -> None:
        self._tf32_outside_eval = set_tf32(False)

    def _end_exact_evaluation(self) -> None:
        restore_tf32(self._tf32_outside_eval)
        self._tf32_outside_eval = None

    on_validation_start = on_test_start = on_predict_start = _exact_evaluation
    on_validation_end = on_test_end = on_predict_end = _end_exact_evaluation

    def training_step(self, batch, batch_idx: int = 0) -> torch.Tensor | None:
        """The summed loss of the learning layers on one batch ``(images, labels)``.

        ``labels=None`` (unlabelled data): the layers whose loss reads labels (the classifier) have
        no loss in this step and stay as they are (their parameters get no gradient); the GMM
        layers train as with labels. With ``model.cuda_graph=true`` the step also updates the
        parameters (:meth:`_engine`) and returns nothing.
        """
        x, labels = batch
        if self.automatic_optimization:
            return self.learner.loss(x, labels, self.global_step)
        self._engine()(x, labels, self.global_step)
        return None

    def _steps_of_a_call(self, dataloader_iter) -> None:
        """``steps_per_call`` SGD steps, one per batch taken from the training loader's iterator (fewer
        at the end of an epoch or at ``trainer.max_steps``, which Lightning checks between calls only),
        each moved to the device as Lightning moves a batch."""
        trainer = self.trainer
        batches = (trainer.strategy.batch_to_device(trainer.precision_plugin.convert_input(batch)) for batch, _, _ in dataloader_iter)
        self.learner.run(self._engine(), batches, self.global_step, trainer.max_steps, count=self._steps_per_call)

    def _engine(self) -> EagerEngine | GraphEngine:
        """The engine of the manual steps (made once per fit): the CUDA graph (``model.cuda_graph``,
        captured on a GPU) or the eager step, whose backward runs through the strategy."""
        if self.engine is None:
            optimizer = self.optimizers()
            if self.hparams.get("cuda_graph"):
                self.engine = GraphEngine(self.learner, optimizer, capture=self.device.type == "cuda")
            else:
                self.engine = EagerEngine(self.learner, optimizer, backward=self._backward)
        return self.engine

    def _backward(self, loss: torch.Tensor) -> None:
        # outside the precision plugin's autocast region, in which training_step runs: the
        # automatic path runs its backward there too (mixed precision gives the same updates)
        with torch.autocast(self.device.type, enabled=False):
            self.manual_backward(loss)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """One update: the SGD step (its closure runs :meth:`training_step`), the precision
        clipping, then one step of every learning GMM layer's annealing schedule on this step's
        losses (new sigma and lr apply from the next step).

        The schedules step here, inside the update, so that whatever runs after it (a checkpoint
        written by a callback after this batch, the next step) sees the parameters and the
        schedules of the same step, and a window that closes on a non-finite loss stops training
        before any callback can save it.
        """
        optimizer.step(closure=optimizer_closure)
        self.learner.after_update(optimizer)

    def _is_log_step(self) -> bool:
        """True on the steps whose values the logger records (every ``log_every_n_steps``).

        Logging only there keeps Lightning's per-call logging cost out of the other steps;
        ``trainer.log_every_n_steps=1`` records sigma, lr and the losses at every step. With one
        step per call Lightning's own clock (the logger's step plus one) equals ``global_step``
        after a step; with ``steps_per_call > 1`` it counts calls, so the module keeps to
        ``global_step`` (:meth:`log_values`).
        """
        every = int(self.trainer.log_every_n_steps)
        if every <= 0:
            return False
        return self.global_step % every == 0 or bool(self.trainer.fast_dev_run)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Log the step's losses, sigma and lr (on the logger's steps only)."""
        if self._is_log_step():
            values = {}
            learner = self.learner
            for index, layer_loss in learner.last_losses.items():
                values[f"train/{self.stack.layers[index].name}/loss"] = layer_loss.detach()
            for row, index in enumerate(self.schedules):  # device values: no host-to-device copy
                values[f"train/{self.stack.layers[index].name}/sigma"] = learner.schedule_values[row, 0]
                values[f"train/{self.stack.layers[index].name}/lr"] = learner.schedule_values[row, 1]
            values["train/loss"] = torch.stack([learner.last_losses[layer.index] for layer in self.stack.gmm_layers]).detach().sum()
            self.log_values(values, on_step=True, on_epoch=False, batch_size=learner.batch_size)

    def log_values(self, values: Mapping, on_step: bool = False, **options) -> None:
        """Log ``values`` (name -> tensor or float) for the callbacks, the progress bar (``loss`` and
        ``acc``) and the loggers, where one step per call puts them on the axis of SGD steps (during
        fit at the 0-based index of the latest step, afterwards at ``global_step``). The module and
        the project's callbacks log through here.

        With ``steps_per_call > 1`` Lightning's logger clock counts calls, so the values are written
        to the loggers here, with the epoch beside them as Lightning adds it (``self.log`` keeps
        them for the callbacks and the progress bar only). Metrics that other callbacks write
        themselves (e.g. ``LearningRateMonitor``) keep Lightning's clock of calls."""
        grouped = self._steps_per_call > 1
        for name, value in values.items():
            prog_bar = name.rsplit("/", 1)[-1] in ("loss", "acc") and name.count("/") == 1
            self.log(name, value, prog_bar=prog_bar, logger=False if grouped else None, on_step=on_step, **options)  # None: Lightning's default
        if grouped and values and self.loggers and not self.trainer.sanity_checking:  # (Lightning logs no sanity check)
            metrics = {name: float(value) for name, value in values.items()}  # host reads on logging steps only
            metrics["epoch"] = self.current_epoch
            step = self.global_step - 1 if self.trainer.state.fn == "fit" else self.global_step
            for logger in self.loggers:
                logger.log_metrics(metrics, step=step)
                logger.save()

    def on_train_epoch_end(self) -> None:
        self._raise_if_nonfinite()  # before ModelCheckpoint saves the epoch
        # one host read per epoch; the same numbers on every process (built from the losses
        # averaged over processes), so nothing is synchronised for logging
        epoch = self.learner.end_epoch()
        if epoch:
            values = {"train/loss_epoch": sum(mean for layer, mean, _ in epoch if layer.is_density)}
            values.update({f"train/{layer.name}/loss_epoch": mean for layer, mean, count in epoch if count})  # layers that had a loss
            self.log_values(values, batch_size=1)  # means already (the dataloader_iter flavour asks for a size)

    def _mean_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        """Mean over data-parallel processes (identity on one process), on a copy of ``value``.

        A plain all-reduce (sum, then divided by the number of processes: gloo has no average):
        unlike the strategy's ``reduce`` it runs no barrier, so it does not block the host.
        """
        if self._trainer is None or self.trainer.world_size == 1:
            return value
        shared = value.detach().clone()
        torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.SUM)
        return shared.div_(self.trainer.world_size)

    def _raise_if_nonfinite(self) -> None:
        if self.learner is not None:  # (validation outside fit: nothing trained)
            self.learner.raise_if_nonfinite()

    def on_validation_epoch_start(self) -> None:
        self._raise_if_nonfinite()

    # ------------------------------------------------------------------------------- evaluation
    def _evaluate(self, batch, stage: str) -> EvalOutputs:
        """The stage's metrics of one batch from one bottom-up pass, whose raw outputs are returned
        for the callbacks (:class:`dcgmm.core.scoring.EvalOutputs`)."""
        x, labels = batch
        n = x.shape[0]
        _, raw = self._bottom_up(x)
        losses = self.stack.losses(raw, labels)
        gmm_losses = [losses[layer.index] for layer in self.stack.gmm_layers]
        self.metrics[f"{stage}_loss"].update(torch.stack(gmm_losses).sum(), weight=n)
        for index, layer_loss in losses.items():
            self.metrics[f"{stage}_{self.stack.layers[index].name}"].update(layer_loss, weight=n)
        outputs = EvalOutputs(self.stack, raw, labels)
        self.metrics[f"{stage}_loglik"].update(outputs.top_log_likelihood)
        self.metrics[f"{stage}_bound"].update(self.stack.top_gmm.max_component_bound(outputs.top_scores))
        if self.stack.classifier is not None and labels is not None:  # share of images whose most likely class is their label
            predicted = raw[self.stack.classifier.index].flatten(1).argmax(dim=1)
            self.metrics[f"{stage}_acc"].update(predicted == labels)
        if stage == "test" and self.stack.is_pixel_density:
            self.metrics["test_bpd"].update(self.bits_per_dim(x))
        return outputs

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`dcgmm.core.scoring.bits_per_dim` of the stack: ``(N,)`` for images ``x = u8 / 255``."""
        return bits_per_dim(self.stack, x)

    def _log_metrics(self, stage: str) -> None:
        layer_names = {layer.name for layer in self.stack.learning_layers}
        values = {}
        for key, metric in self.metrics.items():
            if key.startswith(stage + "_") and metric.update_called:
                name = key[len(stage) + 1 :]
                values[f"{stage}/{name}/loss" if name in layer_names else f"{stage}/{name}"] = metric.compute()
                self._reset(metric)
        self.log_values(values)

    @staticmethod
    def _reset(metric) -> None:
        """Reset a metric with normal (not inference-mode) state tensors, so that a run of
        ``trainer.validate`` (inference mode) can be followed by ``trainer.fit`` (no_grad)."""
        with torch.inference_mode(False):
            metric.reset()

    def validation_step(self, batch, batch_idx: int) -> EvalOutputs:
        return self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch, batch_idx: int) -> EvalOutputs:
        return self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0) -> EvalOutputs:
        """One bottom-up pass of a batch (images, or ``(images, labels)``) for ``trainer.predict``:
        its :class:`~dcgmm.core.scoring.EvalOutputs` (typicalities per layer, cluster ids, component and
        class probabilities, log-likelihood), read on first use."""
        if isinstance(batch, (tuple, list)):  # (images, labels), or [images] from a TensorDataset of images
            x, labels = batch[0], batch[1] if len(batch) > 1 else None
        else:
            x, labels = batch, None
        # the eager pass, not a compiled one: the outputs are read after later batches ran, which
        # a CUDA-graph-compiled pass ("reduce-overhead") would have overwritten
        _, raw = self.stack.bottom_up(x)
        return EvalOutputs(self.stack, raw, labels)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    # ------------------------------------------------------------------------------- state
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # no collective here: a checkpoint may be written on some processes only; the schedules
        # are the same on every process (they step on losses averaged over processes)
        checkpoint["annealing"] = self.annealing.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.annealing.load_state_dict(checkpoint.get("annealing", {}))


def plain_sgd_step(
    module: DCGMMModule, optimizer: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor, set_to_none: bool = True
) -> torch.Tensor:
    """:func:`dcgmm.training.step.sgd_step` through the module's bottom-up pass (compiled after
    ``configure_model`` with ``compile=true``): for timing and profiling a module's step."""
    return sgd_step(module.stack, optimizer, x, labels, bottom_up=module._bottom_up, set_to_none=set_to_none)

"""One SGD step of a DCGMM, without Lightning: the step, its bookkeeping and the engines that run it.

Every learning layer reads a detached input, so one backward pass of the weighted sum of the
layer losses gives each layer the gradient of its own loss alone; a layer that still waits gets
weight 0. A step is, in order::

    wait weights -> layer losses -> backward -> update -> precision clipping -> annealing bookkeeping

:class:`Learner` holds what one fit keeps between steps (waits, the schedules' values, the epoch's
loss sums, the first non-finite step); the engines run the step through it:

- :class:`EagerEngine`: autograd and the optimiser's own ``step`` (any optimiser);
- :class:`~dcgmm.training.graphstep.GraphEngine`: forward, backward, SGD update and clipping recorded once as a CUDA graph
  and replayed (:class:`dcgmm.training.graphstep.GraphedStep`; plain SGD only; eager on the CPU);
- :meth:`Learner.run`: ``S`` steps per call, one after another through either engine.

The LightningModule (:class:`dcgmm.app.module.DCGMMModule`) picks an engine and is glue around it;
the benchmarks time the same step with :func:`sgd_step`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from dcgmm.core.model import DCGMM
from dcgmm.errors import TrainingDiverged
from dcgmm.training.annealing import Annealing, first_learning_step
from dcgmm.training.policy import LayerTraining

__all__ = ["EagerEngine", "Learner", "loss_vector", "sgd_step", "NEVER"]

NEVER = torch.iinfo(torch.long).max  # "no such step" in the first-non-finite-step tensor


def loss_vector(stack: DCGMM, raw: Mapping[int, torch.Tensor], labels: torch.Tensor | None,
                keep_graph: bool = False) -> tuple[torch.Tensor, tuple[bool, ...]]:
    """The learning layers' losses ``(L,)``, in the stack's order, from one bottom-up pass's raw
    outputs, and which of the layers have a loss in this step.

    A layer without one (a classifier in a step without labels) holds a constant zero, so that its
    parameters get no gradient at all (``None``: any optimiser leaves them alone); with
    ``keep_graph`` (data-parallel training) a zero that keeps them in the graph, which DDP's
    gradient reduction needs (plain SGD then leaves them unchanged).
    """
    losses = stack.losses(raw, labels)
    learners = stack.learning_layers
    present = tuple(layer.index in losses for layer in learners)
    if all(present):
        return torch.stack([losses[layer.index] for layer in learners]), present
    first = next(iter(losses.values()))
    zero = torch.zeros((), dtype=first.dtype, device=first.device)
    return torch.stack([
        losses[layer.index] if layer.index in losses else (0.0 * raw[layer.index].sum() if keep_graph else zero)
        for layer in learners
    ]), present


def sgd_step(stack: DCGMM, optimizer: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor | None,
             bottom_up: Callable | None = None, set_to_none: bool = True) -> torch.Tensor:
    """One training step without annealing, waits or logging (timing and profiling): the summed
    layer losses, one optimiser step and the precision clipping. ``bottom_up``: the pass to run
    (default ``stack.bottom_up``; a compiled one after ``model.compile``); ``set_to_none=False``
    keeps the gradient tensors in place (for CUDA-graph capture). Returns the detached summed loss."""
    _, raw = (bottom_up or stack.bottom_up)(x)
    loss = loss_vector(stack, raw, labels)[0].sum()
    optimizer.zero_grad(set_to_none=set_to_none)
    loss.backward()
    optimizer.step()
    stack.constrain_()
    return loss.detach()


class Learner:
    """The training state of one fit of ``stack`` and the parts of a step every engine shares.

    Args:
        stack: the DCGMM stack.
        policies: ``{layer index: LayerTraining}`` of the learning layers (their ``wait``).
        annealing: the schedules of the learning density layers.
        total_steps: SGD steps of the fit, for the wait fractions.
        bottom_up: the bottom-up pass to run (default ``stack.bottom_up``; a compiled one).
        reduce: mean over data-parallel processes of a detached ``(L,)`` loss vector (default: one
            process); the bookkeeping reads only reduced losses, so it is the same everywhere.
        keep_graph: keep layers without a loss in the graph (data-parallel training, see
            :func:`loss_vector`).
        device: where the per-step state lives (no host sync to update it).

    Per-step state, on ``device``: :attr:`nonfinite_step` (first step at which each learning
    layer's loss was NaN or inf), :attr:`loss_sum` (per-layer sum over the epoch; the step counts
    per layer, :attr:`loss_steps`, on the host), :attr:`schedule_values` (sigma and lr of every
    schedule, for logging without a host copy) and :attr:`last_losses` (the step's reduced losses).
    """

    def __init__(self, stack: DCGMM, policies: Mapping[int, LayerTraining], annealing: Annealing, total_steps: int = 1,
                 bottom_up: Callable | None = None, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 keep_graph: bool = False, device: torch.device | str | None = None) -> None:
        self.stack, self.annealing = stack, annealing
        self.bottom_up = bottom_up or stack.bottom_up
        self.reduce, self.keep_graph = reduce, keep_graph
        self.learners = stack.learning_layers
        total = max(int(total_steps), 1)
        self.first_steps = [first_learning_step(policies[layer.index].wait, total) for layer in self.learners]
        count = len(self.learners)
        self.nonfinite_step = torch.full((count,), NEVER, dtype=torch.long, device=device)
        self.loss_sum = torch.zeros(count, device=device)
        self.loss_steps = [0] * count
        self.steps_in_epoch = 0
        self.steps = self.images = 0  # steps run and images trained on in this fit (host ints)
        self.batch_size = 0  # images of the latest step
        self.schedule_values = torch.zeros(len(annealing.schedules), 2, device=device)
        self.last_losses: dict[int, torch.Tensor] = {}
        self._learning_now: dict[int, bool] = {}
        self._weights: dict[tuple[bool, ...], torch.Tensor] = {}  # 0/1 loss weights per waiting pattern, on the device
        self.refresh_schedule_values()

    # ------------------------------------------------------------------------------ one step
    def learning(self, present: tuple[bool, ...], step: int) -> tuple[bool, ...]:
        """Which learning layers learn at ``step``: those with a loss and past their wait."""
        return tuple(has and step >= first for has, first in zip(present, self.first_steps))

    def weights(self, pattern: tuple[bool, ...], like: torch.Tensor) -> torch.Tensor:
        """``pattern`` as a 0/1 tensor on ``like``'s device, made once per pattern (no per-step copy)."""
        if pattern not in self._weights:
            self._weights[pattern] = torch.tensor(pattern, dtype=like.dtype, device=like.device)
        return self._weights[pattern]

    def loss(self, x: torch.Tensor, labels: torch.Tensor | None, step: int) -> torch.Tensor:
        """The weighted (0 for a waiting layer) sum of the learning layers' losses on one batch, after
        the step's bookkeeping (:meth:`record`): what the backward pass differentiates."""
        _, raw = self.bottom_up(x)
        losses, present = loss_vector(self.stack, raw, labels, self.keep_graph)
        learning = self.learning(present, step)
        self.record(losses.detach(), present, learning, step, len(x))
        if all(learning):
            return losses.sum()
        # a waiting layer's loss counts with weight 0: no update, yet every parameter stays in the
        # graph, which data-parallel training needs; one host-to-device copy per waiting pattern
        return (losses * self.weights(learning, losses)).sum()

    def record(self, losses: torch.Tensor, present: tuple[bool, ...], learning: tuple[bool, ...], step: int, images: int) -> None:
        """Bookkeeping of a step's detached layer losses ``(L,)``: reduced over processes, kept for
        annealing and logging, checked for NaN, summed for the epoch; ``learning`` decides which
        schedules step in :meth:`after_update`; ``images``: the batch's size."""
        shared = losses if self.reduce is None else self.reduce(losses)
        self.last_losses = {layer.index: shared[slot] for slot, layer in enumerate(self.learners) if present[slot]}
        # three small ops per step: this step's index where a loss is not finite, the minimum
        # with the steps seen so far (in place)
        step_if_bad = torch.where(torch.isfinite(shared), NEVER, step)
        torch.minimum(self.nonfinite_step, step_if_bad, out=self.nonfinite_step)
        self.loss_sum += shared
        for slot, has in enumerate(present):
            self.loss_steps[slot] += has
        self.steps_in_epoch += 1
        self.steps, self.images, self.batch_size = self.steps + 1, self.images + int(images), int(images)
        self._learning_now = {layer.index: on for layer, on in zip(self.learners, learning)}

    def after_update(self, optimizer: torch.optim.Optimizer) -> None:
        """What follows every update: the precision clipping, then one step of the annealing
        schedules of the layers that learned (new sigma and lr apply from the next step). A window
        that closes on a non-finite loss stops training (:meth:`raise_if_nonfinite`)."""
        self.stack.constrain_()
        optimizer = getattr(optimizer, "optimizer", optimizer)  # torch's optimiser inside a wrapper
        window_closed = False
        for index in self.annealing.schedules:
            if not self._learning_now.get(index, True):
                continue
            if self.annealing.step(index, self.last_losses[index], optimizer):
                self.refresh_schedule_values()
            window_closed |= self.annealing.decided(index)
        if window_closed:
            self.raise_if_nonfinite()

    def run(self, engine: Callable, batches: Iterable, step: int, max_steps: int | None = None, count: int | None = None) -> int:
        """``S`` steps per call: one step of ``engine`` per batch ``(x, labels)`` of ``batches``, in
        order, the first at ``step``; at most ``count`` of them and none at or past ``max_steps``
        (a batch is taken from ``batches`` only when it will be trained on). Returns the steps run."""
        done, batches = 0, iter(batches)
        while count is None or done < count:
            if max_steps is not None and max_steps >= 0 and step + done >= max_steps:
                break
            batch = next(batches, None)
            if batch is None:
                break
            engine(*batch, step + done)
            done += 1
        return done

    # ------------------------------------------------------------------------------ state
    def refresh_schedule_values(self) -> None:
        """Copy the schedules' sigma and lr to the device tensor that is logged (when they change)."""
        values = self.annealing.values()
        if values:
            self.schedule_values.copy_(torch.tensor(values, dtype=self.schedule_values.dtype))

    def raise_if_nonfinite(self) -> None:
        """One-line error naming the first layer whose loss became NaN or infinite, and the step."""
        for layer, step in zip(self.learners, self.nonfinite_step.tolist()):
            if step != NEVER:
                raise TrainingDiverged(
                    f"{layer.name}: loss became NaN or infinite at step {step}; lower the learning rate "
                    f"(model.lr) or check the input data; no checkpoint was written after that step"
                )

    def end_epoch(self) -> list[tuple[object, float, int]]:
        """``(layer, mean training loss, steps with a loss)`` per learning layer over the epoch (one
        host read), then a fresh epoch; empty when no step ran."""
        if not self.steps_in_epoch:
            return []
        steps = self.loss_steps
        means = [total / max(count, 1) for total, count in zip(self.loss_sum.tolist(), steps)]
        self.loss_sum.zero_()
        self.loss_steps = [0] * len(steps)
        self.steps_in_epoch = 0
        return list(zip(self.learners, means, steps))


class EagerEngine:
    """A step through autograd and the optimiser's own ``step``: loss, zero_grad, backward, update,
    then :meth:`Learner.after_update`. ``backward``: how to differentiate the loss (default
    ``loss.backward()``; the LightningModule passes its strategy's)."""

    def __init__(self, learner: Learner, optimizer: torch.optim.Optimizer, backward: Callable | None = None) -> None:
        self.learner, self.optimizer = learner, optimizer
        self.backward = backward or torch.Tensor.backward

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None, step: int) -> None:
        loss = self.learner.loss(x, labels, step)
        self.optimizer.zero_grad()
        self.backward(loss)
        self.optimizer.step()
        self.learner.after_update(self.optimizer)


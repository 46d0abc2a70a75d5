"""The parts of a DCGMM's SGD step that every way of running it shares, without Lightning.

Every learning layer reads a detached input, so one backward pass of the weighted sum of the
layer losses gives each layer the gradient of its own loss alone; a layer that still waits gets
weight 0. :func:`loss_vector` is the one place where that vector of layer losses is built: the
LightningModule's step (:class:`dcgmm.app.module.DCGMMModule`, one step per call or several), the
captured CUDA-graph step (:class:`dcgmm.training.graphstep.GraphedStep`) and the plain step of the
benchmarks (:func:`sgd_step`) all read it from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from dcgmm.core.model import DCGMM

__all__ = ["loss_vector", "sgd_step"]


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

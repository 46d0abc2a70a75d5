"""A whole training step of a DCGMM stack recorded once as a CUDA graph and replayed (docs/design.md section 6).

On a GPU a training step of these models launches a few hundred small kernels: at batch 100 the
GPU finishes them faster than Python can launch them, so an eager step of topology B costs about
3 ms of which well under 1 ms is GPU work. :class:`GraphedStep` records forward pass, layer losses,
backward pass, SGD update and precision clipping once as a ``torch.cuda.CUDAGraph`` and replays
it for every batch: one launch per step, no host synchronisation. ``model.cuda_graph=true``
trains through it (:class:`dcgmm.app.module.DCGMMModule`).

What a replay may change without recording again, because it lives in tensors the graph reads:
the batch, the loss weights of waiting layers, the learning rates (device tensors, refreshed when
annealing changes a group's ``lr``), the smoothing kernels (rebuilt in place by
:meth:`dcgmm.core.layers.GMMLayer.set_sigma`) and the parameters. What records a new graph: another
batch shape, a step without labels, and a smoothing kernel that becomes the identity (the
objective then skips its product). Each graph keeps its own memory pool (a step's peak memory):
graphs that shared one would have to be replayed in the order they were recorded.

The update is plain SGD, ``p <- p - lr * grad`` per parameter group (the paper's optimiser and the
default ``model.optimizer``); other optimisers are refused with a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dcgmm.core.model import DCGMM
from dcgmm.errors import ConfigError
from dcgmm.training.step import Learner
from dcgmm.training.step import loss_vector as layer_losses

SGD_EXTRAS = ("momentum", "weight_decay", "nesterov", "maximize")


def plain_sgd_problem(name: str, settings: dict) -> str | None:
    """Why an optimiser of class ``name`` (e.g. ``"SGD"``) with ``settings`` (its keyword
    arguments or a parameter group) is not plain SGD, as a one-line error; ``None`` if it is."""
    if name != "SGD":
        return (f"model.cuda_graph=true updates the parameters by plain SGD, but model.optimizer is {name}; "
                f"use the default optimizer (torch.optim.SGD) or model.cuda_graph=false")
    extras = {k: settings[k] for k in SGD_EXTRAS if settings.get(k)}
    if extras:
        return f"model.cuda_graph=true updates the parameters by plain SGD, but the optimizer sets {extras}; drop them or use model.cuda_graph=false"
    return None


def check_plain_sgd(optimizer: torch.optim.Optimizer) -> None:
    """One-line error unless ``optimizer`` is plain SGD (no momentum, weight decay, nesterov or maximize)."""
    name = "SGD" if type(optimizer) is torch.optim.SGD else type(optimizer).__name__
    for group in optimizer.param_groups:
        problem = plain_sgd_problem(name, group)
        if problem:
            raise ConfigError(problem)


@dataclass
class _Recorded:
    """One recorded graph and the static tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    x: torch.Tensor  # (N, C, H, W) batch, copied in before each replay
    labels: torch.Tensor | None  # (N,) class ids, or None for a step without labels
    weights: torch.Tensor  # (L,) loss weight of each learning layer
    losses: torch.Tensor  # (L,) the step's layer losses (output)


class GraphedStep:
    """One SGD training step of ``stack``, recorded as a CUDA graph (``capture=True``) or run
    eagerly (``capture=False``: the same arithmetic without a graph, e.g. on the CPU).

    Args:
        stack: the DCGMM stack.
        optimizer: plain ``torch.optim.SGD`` over the stack's learning layers; its parameter
            groups give the parameters and their current learning rates.
        capture: record and replay CUDA graphs (needs the stack on a CUDA device).
    """

    def __init__(self, stack: DCGMM, optimizer: torch.optim.Optimizer, capture: bool) -> None:
        check_plain_sgd(optimizer)
        self.stack, self.optimizer, self.capture = stack, optimizer, bool(capture)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]  # in group order
        self._lr_values: list[float] | None = None  # the rates now in self._lr
        self._lr: list[torch.Tensor] = []  # one 0-dim device tensor per parameter group
        self._recorded: dict[tuple, _Recorded] = {}
        self.recordings = 0  # graphs recorded so far (tests, benchmarks)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
        """Train on one batch: ``x (N, C, H, W)``, ``labels (N,)`` or ``None``, ``weights (L,)`` (0 for
        a learning layer that still waits). Returns the layer losses ``(L,)`` of the step, before
        the update; with ``capture`` the graph's output tensor, overwritten by the next step."""
        self._refresh_learning_rates()
        if not self.capture:
            return self._step(x, labels, weights)
        key = (tuple(x.shape), x.dtype, labels is None, tuple(layer._smoothing_is_identity for layer in self.stack.gmm_layers))
        recorded = self._recorded.get(key)
        if recorded is None:
            recorded = self._recorded[key] = self._record(x, labels, weights)
        recorded.x.copy_(x)
        if labels is not None:
            recorded.labels.copy_(labels)
        recorded.weights.copy_(weights)
        recorded.graph.replay()
        return recorded.losses

    # ------------------------------------------------------------------------------ internals
    def _refresh_learning_rates(self) -> None:
        """Copy the groups' ``lr`` to the device tensors the update reads, when one changed (annealing)."""
        values = [float(group["lr"]) for group in self.optimizer.param_groups]
        if values == self._lr_values:
            return
        if not self._lr:
            param = self.optimizer.param_groups[0]["params"][0]
            self._lr = [torch.zeros((), dtype=param.dtype, device=param.device) for _ in values]
        for tensor, value in zip(self._lr, values):
            tensor.fill_(value)  # in place: a recorded graph reads these addresses
        self._lr_values = values

    def _step(self, x: torch.Tensor, labels: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
        """Forward, losses, gradients, SGD update and clipping: the work a graph records."""
        _, raw = self.stack.bottom_up(x)
        loss_vector, _ = layer_losses(self.stack, raw, labels)  # (L,)
        grads = torch.autograd.grad((loss_vector * weights).sum(), self.params, allow_unused=True)
        rates = [lr for lr, group in zip(self._lr, self.optimizer.param_groups) for _ in group["params"]]
        with torch.no_grad():
            for p, grad, lr in zip(self.params, grads, rates):
                if grad is not None:  # None: a layer without a loss in this step (classifier, no labels)
                    p.addcmul_(grad, lr, value=-1.0)  # p - lr * grad
            self.stack.constrain_()
        return loss_vector.detach()

    def _record(self, x: torch.Tensor, labels: torch.Tensor | None, weights: torch.Tensor) -> _Recorded:
        """Warm up on a side stream (as capture requires), put the parameters back, record."""
        static_x, static_w = x.clone(), weights.clone()
        static_labels = None if labels is None else labels.clone()
        saved = [p.detach().clone() for p in self.params]
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step(static_x, static_labels, static_w)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        with torch.no_grad():  # the warm-up steps trained: undo them
            for p, value in zip(self.params, saved):
                p.copy_(value)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            losses = self._step(static_x, static_labels, static_w)
        self.recordings += 1
        return _Recorded(graph, static_x, static_labels, static_w, losses)


class GraphEngine:
    """A step whose forward, backward, plain-SGD update and clipping are one recorded CUDA graph
    (``capture=True``) or the same arithmetic run eagerly (:class:`GraphedStep`),
    then the learner's bookkeeping and annealing. ``optimizer``: plain SGD, or a wrapper of it
    whose ``step`` counts steps (called once per step with no gradients set: it changes nothing)."""

    def __init__(self, learner: Learner, optimizer, capture: bool) -> None:
        self.learner, self.optimizer = learner, optimizer
        self.sgd = getattr(optimizer, "optimizer", optimizer)
        self.graphed = GraphedStep(learner.stack, self.sgd, capture=capture)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None, step: int) -> None:
        learner = self.learner
        present = tuple(labels is not None or not layer.needs_labels for layer in learner.learners)
        learning = learner.learning(present, step)
        weights = learner.weights(learning, learner.loss_sum)  # (L,) 1: learns, 0: waits or has no loss
        losses = self.graphed(x, labels, weights)  # the update is done
        learner.record(losses.clone(), present, learning, step, len(x))
        self.optimizer.step()  # no gradients are set: changes nothing, counts the step where it counts
        learner.after_update(self.sgd)

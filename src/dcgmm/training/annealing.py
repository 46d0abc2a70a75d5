"""Annealing of the max-component objective (docs/design.md section 2).

The kernel itself, ``g(sigma)`` on a toroidal ``sqrt(K) x sqrt(K)`` grid of components, is layer
math and lives with the layers (:mod:`dcgmm.core.layers.smoothing`). Here, two pieces:

* :class:`AnnealingSchedule` -- decides, window by window, when ``sigma`` and the learning rate
  shrink. It keeps the running window sum on the loss's device and reads it once per window,
  so stepping it costs no host synchronisation in the training loop.
* :class:`Annealing` -- the training module's annealing component: one schedule per learning
  density layer of a stack, the sigma it gives each layer, the learning rate it gives each
  optimiser group, and the checkpoint state of all of them, in one place. Configured with Hydra
  as ``model.annealing`` (``_partial_: true``); the layers keep only the math (their smoothing
  kernel for a given sigma).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from dcgmm.core.layers.smoothing import grid_side
from dcgmm.errors import ConfigError
from dcgmm.training.policy import AnnealingSettings, LayerTraining, check_rate

if TYPE_CHECKING:  # pragma: no cover
    from dcgmm.core.model import DCGMM


def first_learning_step(wait: float, total_steps: int) -> int:
    """First (0-based) training step at which a layer that waits the fraction ``wait`` learns.

    As in the authors' code, step ``t`` of ``T`` counts as the fraction ``t / (T + 1)`` of training
    done, and the layer learns once that fraction reaches ``wait``: ``ceil(wait * (T + 1))``
    (``wait = 0``: from step 0; ``wait = 1``: never within the ``T`` steps).
    """
    if wait <= 0.0:
        return 0
    return math.ceil(float(wait) * (int(total_steps) + 1) - 1e-9)


class AnnealingSchedule:
    """Shrinks ``sigma`` and the learning rate when the windowed layer loss stops improving.

    Work in windows of ``window`` steps (``W``). As in the authors' code, the decision of a
    window is taken after its first ``W - 1`` steps, on their mean loss; its last step counts for
    nothing (the first decisions fall on steps ``W-1, 2W-1, 3W-1``, so the first possible change
    is at step ``3W - 1``; ``W = 1``: every step is a window of its own). After window 1 the
    average is remembered as ``l0``, after window 2 as ``last``. At every later decision, with
    ``avg`` that window's average::

        r = (avg - last) / (last - l0)
        if -2 * delta < r < delta:   # improvement small relative to the total so far
            sigma = max(gamma * sigma, sigma_min)
            lr    = max(gamma * lr,    lr_min)
        last = avg

    (``r = 0`` when ``last == l0``.) The ratio is sign-invariant, so the rule reads the same for
    a loss to minimise and an objective to maximise.

    Args:
        sigma0: start value of sigma (``0.25 * sqrt(2K)``; see :meth:`default_sigma0`).
        lr0, lr_min: start and floor of the layer's learning rate.
        sigma_min: floor of sigma (0.01: the smoothing kernel is then the identity).
        gamma: shrink factor (0.9). window: steps per window (100). delta: threshold (0.05).
        enabled: when False, sigma stays at ``sigma_min`` and lr at ``lr0`` (no annealing).
    """

    def __init__(
        self,
        sigma0: float,
        lr0: float,
        lr_min: float,
        sigma_min: float = AnnealingSettings.sigma_min,
        gamma: float = AnnealingSettings.gamma,
        window: int = AnnealingSettings.window,
        delta: float = AnnealingSettings.delta,
        enabled: bool = True,
    ) -> None:
        AnnealingSettings(sigma_min=sigma_min, gamma=gamma, window=window, delta=delta)  # the checks
        check_rate(lr0, "lr0")
        check_rate(lr_min, "lr_min")
        self.enabled = bool(enabled)
        self.sigma_min = float(sigma_min)
        self.lr_min = min(float(lr_min), float(lr0))
        self.gamma, self.window, self.delta = float(gamma), int(window), float(delta)
        self.sigma = float(sigma0) if enabled else self.sigma_min
        self.lr = float(lr0)
        self.steps = 0  # steps seen so far
        self.windows = 0  # windows completed so far
        self.l0: float | None = None
        self.last: float | None = None
        self._window_sum: torch.Tensor | float = 0.0  # device tensor while a window is open

    @staticmethod
    def default_sigma0(num_components: int) -> float:
        """Start value (docs/design.md section 2) ``0.25 * sqrt(2K)``."""
        return 0.25 * math.sqrt(2.0 * num_components)

    def step(self, loss: torch.Tensor | float) -> bool:
        """Add one step's loss; at a window's decision step apply the rule. Returns True if sigma or
        lr changed. Only then is the (device) window sum read back to the host. Under data
        parallelism the module passes losses already averaged over processes, so every process
        takes the same decision at the same step."""
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
        self.steps += 1
        in_window = (self.steps - 1) % self.window + 1  # 1..W
        counted = self.counted_steps
        if in_window > counted:  # the window's last step: not counted (authors' rule)
            return False
        self._window_sum = self._window_sum + loss
        if in_window < counted:
            return False
        total = self._window_sum
        avg = float(total.item() if isinstance(total, torch.Tensor) else total) / counted
        self._window_sum = 0.0
        return self.end_window(avg)

    @property
    def counted_steps(self) -> int:
        """Steps of a window whose losses enter its average: ``W - 1`` (``1`` when ``W = 1``)."""
        return max(self.window - 1, 1)

    def decides_at(self, steps: int) -> bool:
        """True if the schedule takes a window decision at its ``steps``-th step (1-based)."""
        return (steps - 1) % self.window + 1 == self.counted_steps

    def end_window(self, avg: float) -> bool:
        """Apply the rule to one finished window's average loss. Returns True if anything changed."""
        self.windows += 1
        if self.windows == 1:
            self.l0 = avg
            return False
        if self.windows == 2:
            self.last = avg
            return False
        assert self.l0 is not None and self.last is not None
        total_gain = self.last - self.l0
        ratio = 0.0 if total_gain == 0 else (avg - self.last) / total_gain
        changed = False
        if self.enabled and -2.0 * self.delta < ratio < self.delta:
            new_sigma = max(self.sigma * self.gamma, self.sigma_min)
            new_lr = max(self.lr * self.gamma, self.lr_min)
            changed = new_sigma != self.sigma or new_lr != self.lr
            self.sigma, self.lr = new_sigma, new_lr
        self.last = avg
        return changed

    @property
    def at_floor(self) -> bool:
        """True once sigma has reached its floor (the smoothing kernel is the identity)."""
        return self.sigma <= self.sigma_min

    def state_dict(self) -> dict:
        """Everything needed to resume exactly (window sum included)."""
        window_sum = self._window_sum
        return {
            "sigma": self.sigma,
            "lr": self.lr,
            "steps": self.steps,
            "windows": self.windows,
            "l0": self.l0,
            "last": self.last,
            "window_sum": float(window_sum.item() if isinstance(window_sum, torch.Tensor) else window_sum),
        }

    def load_state_dict(self, state: dict) -> None:
        self.sigma, self.lr = float(state["sigma"]), float(state["lr"])
        self.steps, self.windows = int(state["steps"]), int(state["windows"])
        self.l0, self.last = state["l0"], state["last"]
        self._window_sum = float(state["window_sum"])

    def __repr__(self) -> str:
        return f"AnnealingSchedule(sigma={self.sigma:.4g}, lr={self.lr:.4g}, steps={self.steps})"


class Annealing:
    """One :class:`AnnealingSchedule` per learning density layer of a stack, and what follows from it.

    Owns the schedules, gives each annealed layer its sigma (:meth:`Layer.set_sigma`) and each
    optimiser group of that layer its learning rate (the schedule's rate times the group's
    factor), and saves and restores all of it (:meth:`state_dict`, the checkpoint's
    ``"annealing"`` entry, the same format as before this component existed).

    The keyword arguments are the model-wide settings (``model.annealing.<key>``); a layer's spec
    may override any of them for that layer (``anneal``, ``sigma0``, ``sigma_min``, ``gamma``,
    ``window``, ``delta``, e.g. ``+model.layers.1.window=10``). A layer whose objective has no
    smoothing (``loss: logsumexp``) or whose ``anneal`` is false gets a schedule that changes
    nothing (its lr stays at its start, its kernel the identity).

    Args:
        stack: the layers; those with ``is_density`` and ``learns`` get a schedule.
        training: the :class:`~dcgmm.training.policy.LayerTraining` of every learning layer (lr, lr_min).
        sigma0: start of sigma (``None``: ``0.25 sqrt(2K)`` per layer).
        sigma_min, gamma, window, delta: see :class:`AnnealingSchedule`.
    """

    def __init__(
        self,
        stack: DCGMM,
        training: Mapping[int, LayerTraining],
        sigma0: float | None = AnnealingSettings.sigma0,
        sigma_min: float = AnnealingSettings.sigma_min,
        gamma: float = AnnealingSettings.gamma,
        window: int = AnnealingSettings.window,
        delta: float = AnnealingSettings.delta,
    ) -> None:
        self.stack = stack
        self.schedules: dict[int, AnnealingSchedule] = {}
        base = AnnealingSettings(sigma0=sigma0, sigma_min=sigma_min, gamma=gamma, window=window, delta=delta)
        for layer in stack.layers:
            if not (layer.is_density and layer.learns):
                continue
            policy = training[layer.index]
            own = dataclasses.replace(base, **{k: v for k, v in policy.annealing.items() if k != "anneal"})
            enabled = bool(policy.annealing.get("anneal", True)) and layer.annealable
            if enabled:
                grid_side(layer.K, f"layer {layer.index} ({layer.kind})")  # one-line error unless K is a square
            start = AnnealingSchedule.default_sigma0(layer.K) if own.sigma0 is None else float(own.sigma0)
            self.schedules[layer.index] = AnnealingSchedule(
                sigma0=start, lr0=policy.lr, lr_min=policy.lr_min, sigma_min=own.sigma_min, gamma=own.gamma, window=own.window,
                delta=own.delta, enabled=enabled,
            )
        self.apply_sigmas()

    def apply_sigmas(self) -> None:
        """Give every annealed layer its schedule's sigma (the kernel is rebuilt only on a change)."""
        for index, schedule in self.schedules.items():
            if schedule.enabled:
                self.stack.layers[index].set_sigma(schedule.sigma)

    def lr(self, index: int) -> float | None:
        """The current learning rate of layer ``index``'s schedule (``None``: it has none)."""
        schedule = self.schedules.get(index)
        return None if schedule is None else schedule.lr

    def step(self, index: int, loss: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Step layer ``index``'s schedule by one training loss (averaged over processes); on a
        change, apply the new sigma to the layer and the new rate to its optimiser groups (those
        whose ``"layer"`` entry is ``index``, at ``lr * group["factor"]``). Returns True on a change."""
        schedule = self.schedules[index]
        if not schedule.step(loss):
            return False
        if schedule.enabled:
            self.stack.layers[index].set_sigma(schedule.sigma)
        for group in optimizer.param_groups if optimizer is not None else ():
            if group.get("layer") == index:
                group["lr"] = schedule.lr * group["factor"]
        return True

    def decided(self, index: int) -> bool:
        """True if layer ``index``'s schedule took a window decision at its latest step."""
        schedule = self.schedules[index]
        return schedule.decides_at(schedule.steps)

    def values(self) -> list[list[float]]:
        """``[[sigma, lr], ...]`` of the schedules, in layer order (for logging)."""
        return [[schedule.sigma, schedule.lr] for schedule in self.schedules.values()]

    def state_dict(self) -> dict[int, dict]:
        """``{layer index: schedule state}`` (the checkpoint's ``"annealing"`` entry)."""
        return {index: schedule.state_dict() for index, schedule in self.schedules.items()}

    def load_state_dict(self, states: Mapping) -> None:
        """Restore the schedules (keys may be ints or strings) and the layers' sigma."""
        for index, state in states.items():
            if int(index) not in self.schedules:
                raise ConfigError(
                    f"the checkpoint anneals layer {index}, which is not a learning gmm layer of this topology; "
                    f"load it with the topology it was trained with"
                )
            self.schedules[int(index)].load_state_dict(state)
        self.apply_sigmas()

    def __repr__(self) -> str:
        inner = ", ".join(f"L{index}: {schedule!r}" for index, schedule in self.schedules.items())
        return f"Annealing({inner})"

"""How each learning layer trains (docs/design.md section 2): the training policy, kept out of the layers.

A layer spec in a topology holds the layer's math (``K``, ``mode``, ``kernel_size`` ...) and,
beside it, how that layer learns: its learning rate, the factors of its parameter groups (the
lambdas of a GMM layer), the fraction of training it waits, and its own annealing settings.
:func:`split_training` separates the two: the stack (:class:`dcgmm.core.model.DCGMM`) is built from
the math alone, and the training module keeps one :class:`LayerTraining` per learning layer.
Topology files and checkpoints keep their one-dict-per-layer form.

Which keys a layer takes here follows the layer contract, not its kind's name: every learning
layer takes ``lr`` and ``wait``; a density layer (a GMM layer) also takes ``lr_min``, the
lambdas and the per-layer annealing settings (:data:`ANNEALING_KEYS`), and inherits the
model-wide values (``model.lr``, ``model.lambda_mu`` ...) it does not set. Another learning layer
takes ``model.lr`` unless its spec sets ``lr``, except one whose loss reads labels (the
classifier): it trains at its spec's ``lr``, by default 0.01 (the published classifier rate),
whatever ``model.lr`` a sweep sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from dcgmm.core.layers import LAYER_KINDS
from dcgmm.core.typecheck import check_arguments
from dcgmm.errors import ConfigError

LAMBDAS = {"lambda_mu": "mu", "lambda_sigma": "sigma", "lambda_pi": "pi"}  # spec key -> parameter group
LEARNER_KEYS = ("lr", "wait")
MODEL_WIDE = ("lr", "lr_min", *LAMBDAS, "anneal")  # model.<key> values a density layer inherits
CLASSIFIER_LR = 0.01  # a layer whose loss reads labels (the classifier): its lr unless its spec sets one (model.lr does not reach it)


@dataclass(frozen=True)
class LayerTraining:
    """How one learning layer trains.

    Attributes:
        lr: start of its learning rate (annealing may shrink it towards ``lr_min``).
        lr_min: floor of its learning rate (``lr`` for a layer that is not annealed).
        wait: fraction of all training steps before it starts to learn, in ``[0, 1]``.
        factors: learning-rate factor per parameter group name (``mu``, ``sigma``, ``pi`` of a
            GMM layer: the lambdas); a group not named has factor 1.
        annealing: the layer's own annealing settings, overriding the component's (keys of
            :data:`ANNEALING_KEYS`).
    """

    lr: float
    lr_min: float
    wait: float = 0.0
    factors: Mapping[str, float] = field(default_factory=dict)
    annealing: Mapping[str, object] = field(default_factory=dict)

    def factor(self, group: str) -> float:
        return float(self.factors.get(group, 1.0))


@dataclass(frozen=True)
class AnnealingSettings:
    """How a layer's sigma and learning rate anneal: the one home of these settings' defaults and
    checks. ``model.annealing`` in ``conf/model/_common.yaml`` lists the same values (a test holds
    them equal); a layer's spec may override any of them (:data:`ANNEALING_KEYS`).

    Attributes:
        sigma0: start of sigma (``None``: ``0.25 * sqrt(2K)`` per layer, :meth:`AnnealingSchedule.default_sigma0`).
        sigma_min: floor of sigma (0.01: the smoothing kernel is then the identity).
        gamma: shrink factor of sigma and the learning rate at a decision, in (0, 1).
        window: steps per decision window (>= 1).
        delta: threshold of the relative improvement.
    """

    sigma0: float | None = None
    sigma_min: float = 0.01
    gamma: float = 0.9
    window: int = 100
    delta: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.gamma < 1:
            raise ConfigError(f"annealing: gamma={self.gamma} must lie in (0, 1)")
        if self.window < 1:
            raise ConfigError(f"annealing: window={self.window} must be >= 1 step")
        if self.sigma_min <= 0:
            raise ConfigError(f"annealing: sigma_min={self.sigma_min} must be > 0")
        if self.sigma0 is not None and self.sigma0 <= 0:
            raise ConfigError(f"annealing: sigma0={self.sigma0} must be > 0 (or null: 0.25 sqrt(2K) per layer)")


# per-layer overrides of the annealing component (dcgmm.training.annealing.Annealing), e.g. +model.layers.1.window=10
ANNEALING_KEYS = ("anneal", *(f.name for f in fields(AnnealingSettings)))
DENSITY_KEYS = ("lr", "lr_min", "wait", *LAMBDAS, *ANNEALING_KEYS)


@dataclass(frozen=True, kw_only=True)
class LearnerKeys:
    """The training keys of a learning layer's spec, their types and defaults (checked by
    :func:`~dcgmm.core.typecheck.check_arguments` before anything is built)."""

    lr: float
    wait: float = 0.0


@dataclass(frozen=True, kw_only=True)
class DensityKeys(LearnerKeys):
    """A density layer's training keys: those of :class:`LearnerKeys`, its learning-rate floor, the
    learning-rate factors of its parameter groups (the lambdas) and whether it anneals; its own
    annealing settings are :class:`AnnealingSettings`'."""

    lr_min: float
    lambda_mu: float = 1.0
    lambda_sigma: float = 0.1
    lambda_pi: float = 0.2
    anneal: bool = True


# the defaults of a density layer's lambdas (lambda_mu = 1, lambda_sigma = 0.1, lambda_pi = 0.2)
LAMBDA_DEFAULTS = {f.name: f.default for f in fields(DensityKeys) if f.name in LAMBDAS}


def check_rate(value, key: str, where: str = "") -> float:
    """``value`` as a float, or the one-line error of every learning-rate setting (the model's
    ``model.lr``, a layer's ``lr``, a schedule's ``lr0``): ``<where><key>=<value> must be > 0; try <key>=0.01``."""
    if value is None or isinstance(value, bool) or float(value) <= 0:
        raise ConfigError(f"{where}{key}={value} must be > 0; try {key}=0.01")
    return float(value)


def layer_training(index: int, kind: str, own: Mapping, defaults: Mapping | None = None) -> LayerTraining:
    """The :class:`LayerTraining` of layer ``index`` from its spec's training keys ``own`` and the
    model-wide ``defaults``; a one-line ConfigError for a wrong-typed or out-of-range value."""
    where = f"layer {index} ({kind})"
    density = LAYER_KINDS[kind].is_density
    values = dict(own)
    if density:
        for key in MODEL_WIDE:
            if (defaults or {}).get(key) is not None:
                values.setdefault(key, defaults[key])
    elif (defaults or {}).get("lr") is not None and not LAYER_KINDS[kind].needs_labels:
        values.setdefault("lr", defaults["lr"])  # any other learner: the model-wide rate
    check_arguments(DensityKeys if density else LearnerKeys, values, f"{where}: ")
    if density:
        check_arguments(AnnealingSettings, values, f"{where}: ")
    lr = check_rate(values.get("lr", CLASSIFIER_LR), "lr", f"{where}: ")
    lr_min = min(check_rate(values.get("lr_min", lr), "lr_min", f"{where}: "), lr)
    wait = float(values.get("wait", 0.0))
    if not 0.0 <= wait <= 1.0:
        raise ConfigError(f"{where}: wait={wait} must be a fraction of training in [0, 1]")
    factors = {}
    for key, group in LAMBDAS.items() if density else ():
        value = float(values.get(key, LAMBDA_DEFAULTS[key]))
        if value < 0:
            raise ConfigError(f"{where}: {key}={values[key]} must be >= 0")
        factors[group] = value
    annealing = {key: values[key] for key in ANNEALING_KEYS if key in values}
    return LayerTraining(lr=lr, lr_min=lr_min, wait=wait, factors=factors, annealing=annealing)


def split_training(specs: Sequence[Mapping] | None, defaults: Mapping | None = None) -> tuple[list, dict[int, LayerTraining]]:
    """Split a topology into the layer specs the stack is built from and the training of each
    learning layer: ``(specs without training keys, {layer index: LayerTraining})``.

    Specs of unknown kinds (or no kind) pass through unchanged, for the stack to report.
    """
    layers: list = []
    training: dict[int, LayerTraining] = {}
    for index, spec in enumerate(specs or []):
        kind = spec.get("kind") if isinstance(spec, Mapping) else None
        cls = LAYER_KINDS.get(kind) if isinstance(kind, str) else None
        if cls is None or not cls.learns:
            layers.append(spec)
            continue
        keys = DENSITY_KEYS if cls.is_density else LEARNER_KEYS
        params = dict(spec)
        own = {key: params.pop(key) for key in keys if key in params}
        training[index] = layer_training(index, kind, own, defaults)
        layers.append(params)
    return layers, training

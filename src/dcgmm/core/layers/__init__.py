"""DCGMM layers, one per file, all fulfilling the :class:`~dcgmm.core.layers.base.Layer` contract.

A topology names layers by kind (``{kind: gmm, K: 25}``); :data:`LAYER_KINDS` maps kinds to
classes. A new kind is one file with a :class:`Layer` subclass plus one :func:`register_layer`
line, here or in user code (docs/design.md section 9).
"""

from dcgmm.core.layers.base import TOP_DRAWS, Layer, Shape, TopDownContext
from dcgmm.core.layers.classifier import LinearClassifier
from dcgmm.core.layers.folding import Folding
from dcgmm.core.layers.gmm import GMMLayer
from dcgmm.core.layers.pooling import MaxPooling
from dcgmm.errors import ConfigError

# kind name in a topology config -> layer class
LAYER_KINDS: dict[str, type[Layer]] = {}


def register_layer(cls: type[Layer], replace: bool = False) -> type[Layer]:
    """Make ``cls`` buildable as ``{kind: <cls.kind>, ...}`` in a topology (usable as a decorator).

    A kind registered twice raises a one-line ConfigError unless ``replace=True``.
    """
    if not (isinstance(cls, type) and issubclass(cls, Layer)) or cls.kind == Layer.kind:
        raise ConfigError(f"register_layer({cls!r}): give a Layer subclass with its own `kind` name")
    known = LAYER_KINDS.get(cls.kind)
    if known is not None and known is not cls and not replace:
        raise ConfigError(f"layer kind {cls.kind!r} is already registered ({known.__name__}); pass replace=True to override it")
    LAYER_KINDS[cls.kind] = cls
    return cls


def unregister_layer(kind: str) -> None:
    """Remove a registered kind (for tests and interactive sessions)."""
    LAYER_KINDS.pop(kind, None)


for _cls in (Folding, GMMLayer, MaxPooling, LinearClassifier):
    register_layer(_cls)

__all__ = [
    "TOP_DRAWS", "Layer", "Shape", "TopDownContext", "Folding", "GMMLayer", "MaxPooling", "LinearClassifier",
    "LAYER_KINDS", "register_layer", "unregister_layer",
]

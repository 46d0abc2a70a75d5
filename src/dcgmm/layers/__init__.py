"""DCGMM layers, one per file, all sharing the :class:`~dcgmm.layers.base.Layer` interface."""

from dcgmm.layers.base import Layer, Shape
from dcgmm.layers.classifier import LinearClassifier
from dcgmm.layers.folding import Folding
from dcgmm.layers.gmm import GMMLayer
from dcgmm.layers.pooling import MaxPooling

# kind name in a topology config -> layer class
LAYER_KINDS: dict[str, type[Layer]] = {cls.kind: cls for cls in (Folding, GMMLayer, MaxPooling, LinearClassifier)}

__all__ = ["Layer", "Shape", "Folding", "GMMLayer", "MaxPooling", "LinearClassifier", "LAYER_KINDS"]

"""Deep Convolutional Gaussian Mixture Models (Gepperth & Pfülb, IJCNN 2021) in PyTorch."""

from typing import Any

from dcgmm.errors import ConfigError, TrainingDiverged
from dcgmm.resolvers import register_resolvers

# the configs' resolvers (${dcgmm.image_shape:...} of conf/model/_common.yaml and the others), so
# that any config node of this package resolves, whether or not dcgmm.config composed it
register_resolvers()

__all__ = ["ConfigError", "DCGMMEstimator", "TrainingDiverged"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # imported on first use, so that `import dcgmm` stays light (no torch or lightning)
    if name == "DCGMMEstimator":
        from dcgmm.api import DCGMMEstimator

        return DCGMMEstimator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

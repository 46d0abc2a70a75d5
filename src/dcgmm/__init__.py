"""Deep Convolutional Gaussian Mixture Models (Gepperth & Pfülb, IJCNN 2021) in PyTorch."""

from typing import Any

from dcgmm import moved
from dcgmm.app.resolvers import register_resolvers
from dcgmm.errors import ConfigError, TrainingDiverged

# modules of the earlier flat layout (dcgmm.annealing, dcgmm.module, ...) resolve to their new homes,
# so that checkpoints written under those names still load
moved.install()

# the configs' resolvers (${dcgmm.image_shape:...} of conf/model/_common.yaml and the others), so
# that any config node of this package resolves, whether or not dcgmm.app.config composed it
register_resolvers()

__all__ = ["ConfigError", "DCGMMEstimator", "TrainingDiverged"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # imported on first use, so that `import dcgmm` stays light (no torch or lightning)
    if name == "DCGMMEstimator":
        from dcgmm.app.api import DCGMMEstimator

        return DCGMMEstimator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

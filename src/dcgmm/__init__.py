"""Deep Convolutional Gaussian Mixture Models (Gepperth & Pfülb, IJCNN 2021) in PyTorch."""

from dcgmm.errors import ConfigError, TrainingDiverged

__all__ = ["ConfigError", "TrainingDiverged"]
__version__ = "0.1.0"

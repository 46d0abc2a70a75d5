"""Exceptions with one-line messages that say what is wrong and how to fix it."""


class ConfigError(ValueError):
    """A configuration value is invalid. Raised before any data loads or training starts."""


class TrainingDiverged(RuntimeError):
    """A layer loss became NaN or infinite during training."""

"""The Lightning/Hydra application: the LightningModule, the Hydra tasks and entry points, config
composition, callbacks, loggers, checkpoints and the scikit-learn style estimator. Builds on
:mod:`dcgmm.core`, :mod:`dcgmm.training` and :mod:`dcgmm.data`."""

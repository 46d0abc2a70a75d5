"""Training: how each layer learns (policy), the annealing of sigma and the learning rate, the
captured CUDA-graph step and the process settings training runs under. Builds on :mod:`dcgmm.core`."""

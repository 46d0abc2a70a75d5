"""The smoothing kernel of the annealed max-component objective (docs/design.md section 2).

A GMM layer's components sit on a toroidal ``sqrt(K) x sqrt(K)`` grid; its smoothed scores are
``l @ g.T`` with the Gaussian kernel ``g(sigma)`` over that grid, normalised over its second index.
At ``sigma = sigma_min`` the kernel is the identity. The schedule that shrinks ``sigma`` during
training is :mod:`dcgmm.training.annealing`; this module is the layers' math and imports nothing from training.
"""

from __future__ import annotations

import math

import torch

from dcgmm.errors import ConfigError

__all__ = ["grid_side", "is_identity_width", "smoothing_kernel", "toroidal_sq_distances"]


def grid_side(num_components: int, where: str = "GMM layer") -> int:
    """Side of the square component grid; raise a one-line error if K is not a perfect square."""
    side = math.isqrt(int(num_components))
    if side * side != num_components:
        lower, upper = side * side, (side + 1) ** 2
        raise ConfigError(
            f"{where}: K={num_components} is not a perfect square, which annealing needs "
            f"(components sit on a sqrt(K) x sqrt(K) grid); use K={lower} or K={upper}, "
            f"or turn annealing off (anneal=false)"
        )
    return side


def toroidal_sq_distances(side: int) -> torch.Tensor:
    """Squared wrap-around distances between the cells of a ``side x side`` grid: ``(K, K)``."""
    rows = torch.arange(side * side) // side  # (K,) grid row of each component
    cols = torch.arange(side * side) % side  # (K,) grid column of each component
    dr = (rows[:, None] - rows[None, :]).abs()
    dc = (cols[:, None] - cols[None, :]).abs()
    dr = torch.minimum(dr, side - dr)  # wrap around
    dc = torch.minimum(dc, side - dc)
    return (dr * dr + dc * dc).to(torch.float64)


def smoothing_kernel(num_components: int, sigma: float) -> torch.Tensor:
    """Normalised Gaussian kernel ``g_kj = exp(-d(k,j)^2 / 2 sigma^2) / sum_j(...)``: ``(K, K)`` float32.

    Rows sum to one. For small ``sigma`` (e.g. the floor 0.01) it is exactly the identity.
    """
    if sigma <= 0:
        raise ConfigError(f"smoothing kernel: sigma={sigma} must be > 0")
    if is_identity_width(sigma):  # no grid needed (K need not be a perfect square)
        return torch.eye(int(num_components))
    d2 = toroidal_sq_distances(grid_side(num_components))
    g = torch.exp(-d2 / (2.0 * sigma * sigma))
    return (g / g.sum(dim=1, keepdim=True)).to(torch.float32)


def is_identity_width(sigma: float | None) -> bool:
    """True when the kernel of width ``sigma`` is exactly the identity on any grid: the weight of a
    nearest neighbour, ``exp(-1 / 2 sigma^2)``, underflows to 0 in float64 (sigma below ~0.026,
    the floor 0.01 included). ``None`` (no smoothing) counts as the identity."""
    return sigma is None or math.exp(-1.0 / (2.0 * float(sigma) ** 2)) == 0.0

"""GMM layers above a folding: patches and matrix products against two convolutions, same process.

    python -m benchmarks.convolutions [dcgmm2 dcgmm2_pool dcgmm3 dcgmm4_pool] [--threads 1]

For each topology, plain SGD steps of batch 100 (``dcgmm.app.module.plain_sgd_step``) with the
convolution path switched off and on, alternately, three times; the best time of each and their
ratio are printed (absolute times on a shared CPU vary, the ratio much less).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import build_module
from dcgmm.app.module import plain_sgd_step
from dcgmm.core.layers import GMMLayer
from dcgmm.training.runtime import flush_denormals


def step_ms(name: str, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    module = build_module(name)  # the stack decides its convolved foldings when it is built
    optimizer = module.configure_optimizers()
    for _ in range(3):
        plain_sgd_step(module, optimizer, x, y)
    start = time.perf_counter()
    for _ in range(steps):
        plain_sgd_step(module, optimizer, x, y)
    return (time.perf_counter() - start) / steps * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.convolutions", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["dcgmm2", "dcgmm2_pool", "dcgmm3", "dcgmm4_pool"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    flush_denormals()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (100, 1, 28, 28), generator=g).float() / 255
    y = torch.randint(0, 10, (100,), generator=g)
    convolves = GMMLayer.convolves
    print(f"{'model':<14}{'patches ms':>12}{'conv ms':>10}{'speed-up':>10}")
    for name in args.models:
        best = {"patches": float("inf"), "conv": float("inf")}
        for _ in range(3):
            for label, rule in (("patches", lambda self, fold: False), ("conv", convolves)):
                GMMLayer.convolves = rule
                try:
                    best[label] = min(best[label], step_ms(name, x, y, args.steps))
                finally:
                    GMMLayer.convolves = convolves
        print(f"{name:<14}{best['patches']:>12.1f}{best['conv']:>10.1f}{best['patches'] / best['conv']:>9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

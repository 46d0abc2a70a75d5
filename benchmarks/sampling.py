"""Sampling speed and sample quality (NDB) of trained checkpoints, with and without sharpening.

    python -m benchmarks.sampling CKPT [CKPT ...] [--n 64] [--iterations 300] [--ndb-samples 1000]

For every checkpoint: samples/s for ``n`` samples (top-S 1, divisor 5) without sharpening and with
``iterations`` sharpening steps (rate 0.1), and NDB/B and JS divergence (B = 100 k-means bins of
the training set) of ``ndb-samples`` samples drawn each way from the whole prior (top-S = K) with
divisor 1 (the learned spread).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from dcgmm.app.checkpoints import load_module
from dcgmm.app.ndb import NDB
from dcgmm.core.sampling import Sampler, SamplingOptions, SharpeningOptions
from dcgmm.data import load_dataset
from dcgmm.data.datamodule import pixel_tensor
from dcgmm.training.runtime import flush_denormals


def draw(stack, n: int, sharpen_iterations: int, seed: int, divisor: float = 5.0, top_s: int = 1, batch: int = 500) -> tuple[torch.Tensor, float]:
    """``n`` samples (in batches) and the wall seconds it took."""
    options = SamplingOptions(
        top_s=top_s, divisor=divisor,
        sharpening=SharpeningOptions(enabled=sharpen_iterations > 0, rate=0.1, iterations=sharpen_iterations),
    )
    sampler = Sampler(stack, options, torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    images = torch.cat([sampler.sample(min(batch, n - i)) for i in range(0, n, batch)])
    return images, time.perf_counter() - start


def measure(ckpt: str, n: int, iterations: int, ndb_samples: int, ndb: NDB, seed: int) -> dict:
    """Speed and NDB for one checkpoint."""
    flush_denormals()  # before anything starts torch's worker threads
    module = load_module(ckpt)
    stack = module.stack
    result = {"checkpoint": ckpt, "layers": [layer.name for layer in stack.layers]}
    for label, steps in (("plain", 0), ("sharpened", iterations)):
        draw(stack, 4, min(steps, 2), seed)  # warm-up
        _, seconds = draw(stack, n, steps, seed)
        # NDB draws from the whole prior with the learned spread: with top-S 1 every unconditional
        # sample comes from the most probable top component, with divisor 5 near its mean
        whole_prior = min(layer.K for layer in stack.gmm_layers)
        samples, _ = draw(stack, ndb_samples, steps, seed + 1, divisor=1.0, top_s=whole_prior)
        quality = ndb.evaluate(samples).as_dict()
        result[label] = {"samples_per_s": n / seconds, "seconds": seconds, "sharpening_iterations": steps, **quality}
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--ndb-samples", type=int, default=1000)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    data = load_dataset(args.dataset, args.data_dir)
    train = pixel_tensor(data["train_x"]).float().div(255)  # (N, C, H, W)
    ndb = NDB(train, bins=100, cache=Path(args.data_dir) / "cache" / f"ndb_{args.dataset}_100.npz")
    results = [measure(c, args.n, args.iterations, args.ndb_samples, ndb, args.seed) for c in args.checkpoints]
    print(f"{'checkpoint':<60} {'mode':<10} {'samples/s':>10} {'NDB/B':>7} {'JS':>8}")
    for r in results:
        for label in ("plain", "sharpened"):
            m = r[label]
            print(f"{r['checkpoint'][-60:]:<60} {label:<10} {m['samples_per_s']:>10.1f} {m['ndb_ratio']:>7.2f} {m['js']:>8.4f}")
    if args.json:
        meta = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()

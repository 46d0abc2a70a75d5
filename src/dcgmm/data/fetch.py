"""Prepare the dataset caches: ``python -m dcgmm.data.fetch [DATA_DIR] [--datasets ...]``.

Loads every requested dataset through ``load_dataset`` (which builds
``DATA_DIR/cache/<name>.npz``) and prints one line per dataset with the source
used and the split sizes. A dataset that cannot be prepared is reported as a
warning; the exit status is the number of such datasets. By default it prepares the paper's
datasets (MNIST, FashionMNIST), which have offline copies; ``--datasets cifar10 svhn`` downloads
the others (about 160 MB and 180 MB) when online.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from dcgmm.data.errors import DataError
from dcgmm.data.sources import DATASETS, load_dataset_with_source

DEFAULT_DATASETS = ("mnist", "fashion")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcgmm.data.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default="data", help="data folder (default: data)")
    parser.add_argument(
        "--datasets", nargs="+", default=list(DEFAULT_DATASETS), help=f"datasets to prepare, of {', '.join(DATASETS)} (default: mnist fashion)"
    )
    parser.add_argument("--no-download", action="store_true", help="use offline sources only")
    args = parser.parse_args(argv)

    failures = 0
    for name in args.datasets:
        start = time.perf_counter()
        try:
            arrays, source = load_dataset_with_source(name, args.data_dir, download=not args.no_download)
        except DataError as e:
            failures += 1
            print(f"WARNING {name}: not available: {e}", file=sys.stderr, flush=True)
            continue
        print(
            f"{name}: {len(arrays['train_y'])} train / {len(arrays['test_y'])} test images "
            f"from {source} ({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
    return failures


if __name__ == "__main__":
    sys.exit(main())

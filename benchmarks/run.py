"""Command-line benchmarks: ``python -m benchmarks.run SUBCOMMAND [options]`` from the repository root.

Subcommands (``python -m benchmarks.run --help`` lists them):

``flat`` (:mod:`benchmarks.flat`), ``topology`` (:mod:`benchmarks.topology`), ``products``
(:mod:`benchmarks.products`), ``floor`` (:mod:`benchmarks.floor`), ``epoch`` (:mod:`benchmarks.epoch`); the helpers they share live in
:mod:`benchmarks.common`.

Every measurement runs in a freshly spawned process, so that the peak RSS of one (e.g. EM's
float64 copies of the data) does not show up in another. Heavy libraries are imported inside the
measurement functions, so ``--help`` answers at once.

A new subcommand is one more :class:`Subcommand` in :data:`SUBCOMMANDS`: a name, a help line, a
function adding its options to an ``argparse`` parser, one running it (returning a JSON-able
dict) and one formatting that dict as a text table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import DEFAULT_DATA_DIR
from benchmarks.epoch import add_epoch_arguments, format_epoch, run_epoch
from benchmarks.flat import add_flat_arguments, format_flat, run_flat
from benchmarks.floor import add_floor_arguments, format_floor, run_floor
from benchmarks.products import add_products_arguments, format_products, run_products
from benchmarks.topology import add_topology_arguments, format_topology, run_topology


# ----------------------------------------------------------------------------- command line
@dataclass(frozen=True)
class Subcommand:
    """One benchmark: its options, how to run it and how to print its result."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]
    format: Callable[[dict], str]


SUBCOMMANDS: dict[str, Subcommand] = {
    "flat": Subcommand(
        help="flat GMM (conf/model/flat_gmm.yaml) by SGD vs scikit-learn EM: speed, memory, bits/dim",
        add_arguments=add_flat_arguments,
        run=run_flat,
        format=format_flat,
    ),
    "topology": Subcommand(
        help="deep topologies (conf/model/*.yaml): training/inference images/s, peak RSS, profile",
        add_arguments=add_topology_arguments,
        run=run_topology,
        format=format_topology,
    ),
    "products": Subcommand(
        help="each GMM layer's matrix products alone, in every formulation that gives the same numbers",
        add_arguments=add_products_arguments,
        run=run_products,
        format=format_products,
    ),
    "floor": Subcommand(
        help="a training step against its products: the fixed cost of a step, a compiled step, a K-major score pass",
        add_arguments=add_floor_arguments,
        run=run_floor,
        format=format_floor,
    ),
    "epoch": Subcommand(
        help="an epoch of python train.py [overrides]: wall time against time in the steps (overhead)",
        add_arguments=add_epoch_arguments,
        run=run_epoch,
        format=format_epoch,
    ),
}


DEFAULT_SUBCOMMAND = "flat"  # what a bare ``python -m benchmarks.run`` (``make bench``) runs


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser with one sub-parser per entry of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="DCGMM benchmarks. Run from the repository root; each measurement runs in a fresh process. "
        f"Without a subcommand, runs '{DEFAULT_SUBCOMMAND}' with its defaults.",
    )
    subparsers = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    for name, subcommand in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=subcommand.help, description=subcommand.help)
        subcommand.add_arguments(sub)
        sub.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="data folder with the dataset cache")
        sub.add_argument("--json", metavar="PATH", help="also write all numbers to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the chosen benchmark, print its table, optionally save JSON."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv or [DEFAULT_SUBCOMMAND])
    subcommand = SUBCOMMANDS[args.subcommand]
    result = {"command": " ".join(["python -m benchmarks.run", *argv]), **subcommand.run(args)}
    print(subcommand.format(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Trained models shipped with the repository: ``pretrained/<name>.ckpt`` and their manifest.

``pretrained/manifest.json`` maps each name (``<topology letter>_<dataset>``, e.g. ``C_mnist``) to
its file, SHA-256, topology, dataset and where it comes from (the run record it was trained by).
:func:`resolve` checks a name and the file's checksum before anything is loaded; ``python sample.py
pretrained=C_mnist`` and :meth:`dcgmm.app.api.DCGMMEstimator.from_pretrained` go through it.
:func:`add` writes a trained checkpoint into the folder as a slim checkpoint (the module's weights,
hyper-parameters and annealing state; no optimiser, scheduler, loop or callback state) and records
it in the manifest:

    python -m dcgmm.app.pretrained add C_mnist logs/results/full/mnist/table_dcgmm2_pool_s23456/checkpoints/epoch_049.ckpt \\
        --record results/runs/full/mnist/table_dcgmm2_pool_s23456.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from dcgmm.app.checkpoints import load_module, read_checkpoint
from dcgmm.app.config import TOPOLOGY_LETTERS
from dcgmm.app.locations import project_root
from dcgmm.data.sources import atomic_file, file_sha256
from dcgmm.errors import ConfigError

__all__ = ["add", "available", "folder", "resolve"]

# what a shipped checkpoint keeps: the weights, the hyper-parameters, the annealing state the model's
# objective depends on, and where training stopped (no optimiser, loop or data-module state, no local paths)
SHIPPED = ("state_dict", "hyper_parameters", "hparams_name", "pytorch-lightning_version", "annealing", "epoch", "global_step")


def folder() -> Path:
    """``$DCGMM_PRETRAINED``, or the checkout's ``pretrained/``."""
    return Path(os.environ.get("DCGMM_PRETRAINED") or project_root() / "pretrained")


def available() -> dict[str, dict]:
    """The manifest: ``{name: {file, sha256, topology, dataset, source}}`` (empty without one)."""
    manifest = folder() / "manifest.json"
    return json.loads(manifest.read_text())["models"] if manifest.is_file() else {}


def name_of(topology: str, dataset: str) -> str:
    """``C_mnist`` from a topology letter or config name and a dataset."""
    return f"{TOPOLOGY_LETTERS.get(topology, topology)}_{dataset}"


def resolve(name: str) -> Path:
    """The checked file of the pretrained model ``name``; a one-line ConfigError for an unknown
    name (listing the available ones), a missing file or a file whose checksum differs."""
    models = available()
    if name not in models:
        shown = ", ".join(sorted(models)) or f"none in {folder()}"
        raise ConfigError(f"pretrained={name} is unknown; available: {shown}")
    entry = models[name]
    path = folder() / entry["file"]
    if not path.is_file():
        raise ConfigError(f"pretrained={name}: {path} is missing; restore it from the repository (git checkout -- {entry['file']})")
    if file_sha256(path) != entry["sha256"]:
        raise ConfigError(f"pretrained={name}: {path} does not match its SHA-256 in the manifest; nothing was loaded (restore the file)")
    return path


def add(name: str, checkpoint: str | os.PathLike, dataset: str, source: str = "") -> dict:
    """Write ``checkpoint``'s module as ``<folder>/<name>.ckpt`` (only its :data:`SHIPPED` parts)
    and record it in the manifest; returns its entry."""
    module = load_module(checkpoint)
    original = read_checkpoint(Path(checkpoint))
    slim = {key: original[key] for key in SHIPPED if key in original}
    target = folder() / f"{name}.ckpt"
    with atomic_file(target) as out:
        torch.save(slim, out)
    load_module(target)  # the slim file loads as the original does
    entry = dict(file=target.name, sha256=file_sha256(target), bytes=target.stat().st_size, topology=name.split("_", 1)[0], dataset=dataset,
                 layers=len(module.stack.layers), source=source)
    models = {**available(), name: entry}
    with atomic_file(folder() / "manifest.json") as out:
        out.write((json.dumps({"models": dict(sorted(models.items()))}, indent=2) + "\n").encode())
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcgmm.app.pretrained", description="List or add the repository's pretrained models.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    adding = sub.add_parser("add")
    adding.add_argument("name", help="<topology letter>_<dataset>, e.g. C_mnist")
    adding.add_argument("checkpoint")
    adding.add_argument("--dataset", default=None, help="default: the part of the name after the first _")
    adding.add_argument("--record", default="", help="the run record the checkpoint was trained by")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for name, entry in available().items():
                print(f"{name:<14} {entry['bytes']:>10,} bytes  {entry['topology']} on {entry['dataset']}  {entry.get('source', '')}")
        else:
            entry = add(args.name, args.checkpoint, args.dataset or args.name.split("_", 1)[1], args.record)
            print(f"{args.name}: {entry['file']}, {entry['bytes']:,} bytes, sha256 {entry['sha256'][:16]}...")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

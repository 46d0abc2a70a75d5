#!/usr/bin/env python
"""Regenerate the paper's comparison (DCGMM against flat GMMs and scikit-learn's EM) as tables.

    python scripts/results_table.py --preset full --resume    # the published protocol -> results/RESULTS.md, results/full.json
    python scripts/results_table.py --preset small            # -> results/small/RESULTS.md, results/small/small.json
    python scripts/results_table.py --preset small --dry-run  # the plan and a time estimate, no training
    python scripts/results_table.py --preset tiny --out /tmp/table
    python scripts/results_table.py --preset full trainer=gpu # extra Hydra overrides for every run

A preset (``conf/results/<preset>.yaml``) names the datasets, the DCGMM topologies, the rows
compared with each of them, the classes held out by the outlier runs, and Hydra overrides applied
on top of each run's experiment config. For every dataset and every DCGMM topology ``<name>``:

* the DCGMM row trains ``experiment=table_<name>`` on all classes (clustering of the top GMM
  layer, classifier accuracy, NDB of samples, training speed) and ``experiment=table_<name>_outliers``
  once per held-out class (outlier AUROC);
* ``flat_same_k``: a flat GMM whose K is the DCGMM's top-layer K (in the outlier runs: the K of
  the outlier model's top layer);
* ``flat_same_params``: a flat GMM with about as many parameters as the DCGMM (counted on the
  built models, K the nearest perfect square, as the annealing grid needs);
* ``em_same_k``: ``dcgmm.results.baselines.em_baseline`` (scikit-learn EM, diagonal) with the same K.
* ``circuit``: a probabilistic-circuit peer, one row per dataset (not per topology):
  ``dcgmm.results.peers.circuit_baseline`` (spflow's RAT-SPN, the ``circuit:`` settings of the preset),
  trained on all classes and once per held-out class. It needs the extra ``peers``
  (``pip install -e '.[peers]'``; ``make results`` installs it); without it the preset is refused
  with a one-line error before anything trains.

Every SGD row runs once per seed of its dataset (``seeds`` in the preset; the table shows mean ±
standard deviation). Every training run composes ``conf/train.yaml`` with Hydra's compose API and
calls ``dcgmm.app.tasks.train``; its outputs (checkpoint, CSV log, ROC curve, sample grids) go to
``<runs>/<dataset>/<run>/`` (``logs/results/<preset>/`` or ``<out>/runs/``). Its numbers go to a
run record, ``results/runs/<preset>/<dataset>/<run>.json`` (``<out>/records/`` with ``--out``),
written when the run finishes and meant to be committed: ``--resume`` skips the runs whose records
exist, so a long protocol continues across sessions and machines, and refuses, with a one-line
error naming the file, a record of another record version (:data:`RECORD_VERSION`), another
preset or other settings. The report (``RESULTS.md`` with its verdict section, and
``<preset>.json``) is rewritten after every run: ``results/`` for the published protocol
(``full``), ``results/<preset>/`` for the others, the ``--out`` folder when given (the ``tiny``
preset never writes to ``results/``). ``--report-only`` rewrites it from the records alone.

By default torch uses one thread (``--threads``): on a shared CPU, two threads that wait for each
other at every small matrix product are many times slower than one.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without an install too
from dcgmm.results.verdict import verdict_markdown  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "conf"
PRESET_DIR = CONFIG_DIR / "results"
EXPERIMENT_DIR = CONFIG_DIR / "experiment"

# flat GMM experiments (the planner sets model.K)
FLAT_MAIN_BASE = "table_flat"
FLAT_OUTLIER_BASE = "table_flat_outliers"
# version of the run records (results/runs/<preset>/...): bump it whenever a change to training,
# evaluation or the record's fields makes records written before it incomparable; --resume then
# refuses the old records instead of mixing them into a table
RECORD_VERSION = 2
DEFAULT_SEEDS = [12345]
PENDING = "…"
COMPARISONS = ("flat_same_k", "flat_same_params", "em_same_k", "circuit")
PEER_ROWS = {"circuit": "Circuit (spflow RAT-SPN)"}  # peer comparisons: one row per dataset
PAPER_NAMES = {"flat_gmm": "A", "dcgmm2": "B", "dcgmm2_pool": "C", "dcgmm3_pool": "D", "dcgmm3": "E", "dcgmm4": "F", "dcgmm4_pool": "G"}
DATASET_TITLES = {"mnist": "MNIST", "fashion": "FashionMNIST"}
# overrides of every training run: CSV log only, no progress bar or sample grids during training,
# clustering scores of the top layer and training speed; the best checkpoint only
RUN_OVERRIDES = [
    "logger=csv",
    "~callbacks.progress_bar",
    "~callbacks.sample_images",
    "++trainer.enable_progress_bar=false",
    "callbacks.model_checkpoint.save_last=false",
    "task_name=results",
]
CALLBACKS = {"main": "callbacks=[default,top_layer,train_speed]", "outliers": "callbacks=[default,train_speed]"}
MISSING = "–"

log = logging.getLogger("results_table")


# --------------------------------------------------------------------------------------- arguments
def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="results_table.py",
        description="Train the configured models and write the comparison table (RESULTS.md and <preset>.json).",
    )
    parser.add_argument("--preset", default="small", help=f"conf/results/<preset>.yaml: {', '.join(available_presets())} (default small)")
    parser.add_argument("--out", default=None, help="folder of RESULTS.md, <preset>.json and runs/ (default: results/ and logs/results/<preset>/; tiny: logs/results/tiny/)")
    parser.add_argument("--datasets", default=None, help="comma-separated datasets instead of the preset's, e.g. mnist")
    parser.add_argument("--methods", default=None, help="train only the runs of these methods (comma-separated: sgd, em, circuit), e.g. "
                        "circuit to add the peer rows to a table whose other runs go on elsewhere; the report still shows every row")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    parser.add_argument("--resume", action="store_true", help="continue from the finished run records (results/runs/<preset>/) of earlier calls")
    parser.add_argument("--report-only", action="store_true", help="write the table from the run records that exist; train nothing")
    parser.add_argument("--max-hours", type=float, default=None, help="start no new run after this many hours (finished runs are kept; --resume continues)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, parameter counts and a time estimate (times a few SGD steps per model); train nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every training run, e.g. trainer=gpu")
    return parser.parse_args(argv)


class PresetError(ValueError):
    """A preset file that cannot be used (one-line message)."""


def load_preset(name: str) -> dict:
    from omegaconf import OmegaConf

    path = PRESET_DIR / f"{name}.yaml"
    preset = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for key in ("datasets", "dcgmm", "compare", "held_out", "overrides", "em", "ndb"):
        if key not in preset:
            raise PresetError(f"{shown} lacks the key {key!r}")
    unknown = [c for c in preset["compare"] if c not in COMPARISONS]
    if unknown:
        raise PresetError(f"{shown}: compare {unknown} unknown; use any of {list(COMPARISONS)}")
    from dcgmm.results.peers import CircuitSettings

    try:
        preset["circuit"] = CircuitSettings(**(preset.get("circuit") or {})).__dict__
    except TypeError as err:
        raise PresetError(f"{shown}: circuit: {err}".replace("CircuitSettings.__init__() ", "")) from None
    for name_ in preset["dcgmm"]:
        for suffix in ("", "_outliers"):
            if not (EXPERIMENT_DIR / f"table_{name_}{suffix}.yaml").exists():
                raise PresetError(f"{shown}: dcgmm {name_!r} needs conf/experiment/table_{name_}{suffix}.yaml")
    preset["held_out"] = [int(c) for c in preset["held_out"]]
    seeds = preset.get("seeds") or DEFAULT_SEEDS
    if isinstance(seeds, list):
        seeds = {dataset: seeds for dataset in preset["datasets"]}
    if not isinstance(seeds, dict) or not all(isinstance(v, list) and v and all(isinstance(x, int) for x in v) for v in seeds.values()):
        raise PresetError(f"{shown}: seeds must be a list of ints or a mapping dataset -> list of ints")
    preset["seeds"] = seeds
    preset["overrides"] = {k: list(preset["overrides"].get(k) or []) for k in ("all", "main", "outliers")}
    return preset


# ------------------------------------------------------------------------------------ composition
class Composer:
    """Composes conf/train.yaml like ``python train.py OVERRIDES`` with every output below ``runs_dir``."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = runs_dir

    def __call__(self, overrides: list[str], output_dir: Path | None = None):
        from dcgmm.app.config import compose

        return compose("train", overrides, output_dir=output_dir or self.runs_dir / "_plan", root_dir=ROOT, log_dir=self.runs_dir)


def count_params(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def build_model(cfg):
    from dcgmm.app.utils import instantiate

    return instantiate(cfg.model)


# ------------------------------------------------------------------------------------------- plan
@dataclass
class RunSpec:
    """One training run (or EM fit) of the plan; shared by every row that needs it."""

    dataset: str
    name: str  # folder name below <runs>/<dataset>/
    kind: str  # "main" or "outliers"
    method: str  # "sgd" (train.py), "em" or "circuit"
    experiment: str | None = None
    overrides: list[str] = field(default_factory=list)  # the complete Hydra override list
    K: int | None = None
    params: int | None = None
    held_out: int | None = None
    seed: int | None = None  # SGD runs: the run's seed (rows average over their seeds)

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataset, self.name)


@dataclass
class RowSpec:
    dataset: str
    row_id: str
    label: str
    method: str
    main: list[tuple[str, str]]  # run keys, one per seed
    outliers: dict[int, list[tuple[str, str]]]  # held-out class -> run keys, one per seed
    note: str = ""

    @property
    def keys(self) -> list[tuple[str, str]]:
        return [*self.main, *(k for keys in self.outliers.values() for k in keys)]


class Planner:
    """Builds the models of the DCGMM rows to read their top-layer K and parameter counts, derives
    the flat GMM and EM rows from them, and lists the runs (each run once, however many rows use it)."""

    def __init__(self, preset: dict, compose: Composer, extra: list[str]):
        self.preset, self.compose, self.extra = preset, compose, extra
        self.runs: dict[tuple[str, str], RunSpec] = {}
        self.rows: list[RowSpec] = []
        self.notes: list[str] = []
        self._model_info: dict[tuple, tuple[int, int]] = {}
        self._flat_line: tuple[float, float] | None = None

    def sgd_overrides(self, experiment: str, dataset: str, kind: str, row: list[str], seed: int | None = None) -> list[str]:
        ov = self.preset["overrides"]
        seeded = [] if seed is None else [f"seed={seed}"]
        return [f"experiment={experiment}", f"data={dataset}", CALLBACKS[kind], *RUN_OVERRIDES, *ov["all"], *ov[kind], *row, *seeded, *self.extra]

    def seeds(self, dataset: str) -> list[int]:
        return list(self.preset["seeds"].get(dataset, DEFAULT_SEEDS))

    def model_info(self, overrides: list[str]) -> tuple[int, int]:
        """(top-layer K, parameter count) of the model the overrides compose (the seed aside)."""
        key = tuple(o for o in overrides if not o.startswith("seed="))
        if key not in self._model_info:
            module = build_model(self.compose(overrides))
            self._model_info[key] = (int(module.stack.top_gmm.K), count_params(module))
        return self._model_info[key]

    def flat_k_for_params(self, dataset: str, target: int) -> int:
        """The flat GMM's K (a perfect square unless annealing is off) whose parameter count is
        nearest to ``target``; counts are read from built flat models (linear in K)."""
        base = self.sgd_overrides(FLAT_MAIN_BASE, dataset, "main", [])
        if self._flat_line is None:
            p1 = self.model_info(base + ["model.K=1"])[1]
            p4 = self.model_info(base + ["model.K=4"])[1]
            slope = (p4 - p1) / 3.0
            self._flat_line = (slope, p1 - slope)
        slope, intercept = self._flat_line
        k_real = max((target - intercept) / slope, 1.0)
        anneal = bool(self.compose(base).model.get("anneal", True))
        if anneal:
            root = int(math.floor(math.sqrt(k_real)))
            candidates = [r * r for r in (root, root + 1) if r >= 1]
        else:
            candidates = [max(1, int(math.floor(k_real))), int(math.ceil(k_real))]
        return min(candidates, key=lambda k: abs(slope * k + intercept - target))

    def add_run(self, spec: RunSpec) -> tuple[str, str]:
        if spec.key not in self.runs:
            self.runs[spec.key] = spec
        return spec.key

    def sgd_runs(self, dataset: str, experiment: str, kind: str, row: list[str], name: str, held_out: int | None = None) -> list[tuple[str, str]]:
        """One run per seed of the dataset: ``<name>_s<seed>``."""
        keys = []
        for seed in self.seeds(dataset):
            overrides = self.sgd_overrides(experiment, dataset, kind, row, seed)
            K, params = self.model_info(overrides)
            keys.append(self.add_run(RunSpec(dataset, f"{name}_s{seed}", kind, "sgd", experiment, overrides, K, params, held_out, seed)))
        return keys

    @staticmethod
    def flat_experiment(kind: str) -> str:
        return FLAT_OUTLIER_BASE if kind == "outliers" else FLAT_MAIN_BASE

    def plan(self, datasets: list[str]) -> None:
        held_out = self.preset["held_out"]
        for dataset in datasets:
            for topology in self.preset["dcgmm"]:
                letter = PAPER_NAMES.get(topology, topology)
                main_exp, out_exp = f"table_{topology}", f"table_{topology}_outliers"
                main = self.sgd_runs(dataset, main_exp, "main", [], main_exp)
                outliers = {c: self.sgd_runs(dataset, out_exp, "outliers", [f"outlier.held_out={c}"], f"{out_exp}_held{c}", c) for c in held_out}
                k_main, p_main = self.runs[main[0]].K, self.runs[main[0]].params
                first_out = self.runs[outliers[held_out[0]][0]] if held_out else None
                k_out = first_out.K if first_out else None
                p_out = first_out.params if first_out else None
                self.rows.append(RowSpec(dataset, topology, f"{letter} ({topology})", "sgd", main, outliers, f"experiments {main_exp}, {out_exp}"))
                for comparison in self.preset["compare"]:
                    if comparison in ("flat_same_k", "flat_same_params"):
                        if comparison == "flat_same_k":
                            km, ko, label = k_main, k_out, f"A flat, K as {letter}"
                        else:
                            km = self.flat_k_for_params(dataset, p_main)
                            ko = self.flat_k_for_params(dataset, p_out) if p_out else None
                            label = f"A flat, params ≈ {letter}"
                        exp_m = self.flat_experiment("main")
                        m = self.sgd_runs(dataset, exp_m, "main", [f"model.K={km}"], f"flat_k{km}")
                        outs = {}
                        exp_o = None
                        if ko is not None:
                            exp_o = self.flat_experiment("outliers")
                            outs = {c: self.sgd_runs(dataset, exp_o, "outliers", [f"model.K={ko}", f"outlier.held_out={c}"], f"flat_k{ko}_outliers_held{c}", c) for c in held_out}
                        self.rows.append(RowSpec(dataset, f"{comparison}:{topology}", label, "sgd", m, outs, f"experiments {exp_m}, {exp_o} with model.K={km}, {ko}"))
                    elif comparison == "em_same_k":
                        m = [self.add_run(RunSpec(dataset, f"em_k{k_main}", "main", "em", K=k_main))]
                        outs = {c: [self.add_run(RunSpec(dataset, f"em_k{k_out}_held{c}", "outliers", "em", K=k_out, held_out=c))] for c in held_out}
                        self.rows.append(RowSpec(dataset, f"em_same_k:{topology}", f"EM (sklearn), K as {letter}", "em", m, outs, f"dcgmm.results.baselines.em_baseline K={k_main}, {k_out}"))
            for peer, label in PEER_ROWS.items():
                if peer in self.preset["compare"]:
                    m = [self.add_run(RunSpec(dataset, peer, "main", peer))]
                    outs = {c: [self.add_run(RunSpec(dataset, f"{peer}_held{c}", "outliers", peer, held_out=c))] for c in held_out}
                    self.rows.append(RowSpec(dataset, peer, label, peer, m, outs, f"dcgmm.results.peers.{peer}_baseline"))

    def ordered_runs(self) -> list[RunSpec]:
        """The runs in the order they are trained: every row's first seed before any second seed,
        and within a seed the runs on all classes (clustering, samples) before the outlier runs,
        so that an interrupted table has each row once before it has its noise; the peer rows last."""
        specs = list(self.runs.values())
        rank = {dataset: seeds for dataset, seeds in self.preset["seeds"].items()}

        def order(spec: RunSpec) -> tuple[int, int]:
            seed_rank = 0 if spec.seed is None else rank.get(spec.dataset, DEFAULT_SEEDS).index(spec.seed)
            if spec.method in PEER_ROWS:  # peers after every seed of the paper's rows
                seed_rank = len(rank.get(spec.dataset, DEFAULT_SEEDS))
            return seed_rank, 0 if spec.kind == "main" else 1

        return sorted(specs, key=order)


# ---------------------------------------------------------------------------------- measurements
class NDBCache:
    """One NDB binning per dataset: k-means bins of its training split (all classes), cached in
    data/cache, and the NDB of as many real test images as samples, for reference."""

    def __init__(self, ndb_cfg: dict, data_dir: Path):
        self.cfg, self.data_dir = ndb_cfg, data_dir
        self._ndb: dict[str, Any] = {}
        self.train_images: dict[str, int] = {}
        self.reference: dict[str, dict] = {}  # dataset -> NDB of real test images

    def has(self, dataset: str) -> bool:
        return dataset in self._ndb

    def get(self, dataset: str, datamodule=None):
        """The binning of ``dataset``; the first call needs its set-up datamodule (all classes)."""
        if dataset not in self._ndb:
            import torch

            from dcgmm.app.ndb import training_bins

            n = self.cfg.get("train_images")
            bins, kms = int(self.cfg.get("bins", 100)), int(self.cfg.get("kmeans_samples", 20000))
            start = time.perf_counter()
            self._ndb[dataset] = training_bins(datamodule, bins, kms, None if n is None else int(n), self.data_dir / "cache")
            images = int(self._ndb[dataset].train_counts.sum())  # the training images binned
            self.train_images[dataset] = images
            test_x = datamodule.dataset("test").x
            pick = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(0))[: int(self.cfg.get("samples", 1000))]
            real = self._ndb[dataset].evaluate(test_x[pick])
            self.reference[dataset] = dict(real.as_dict(), images=len(pick))
            log.info(f"  NDB bins of {dataset}: {bins} k-means bins of {images:,} training images ({time.perf_counter() - start:.1f} s)")
        return self._ndb[dataset]


def _float(value) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def save_grid(images, path: Path) -> None:
    from dcgmm.core.images import make_grid, save_png

    save_png(make_grid(images[:64], nrow=8), path)


def run_sgd(spec: RunSpec, run_dir: Path, compose: Composer, ndb: NDBCache, ndb_cfg: dict) -> dict:
    """Train and test one configuration with dcgmm.app.tasks.train; NDB of samples for main runs."""

    from dcgmm.app.callbacks import TrainingSpeed
    from dcgmm.app.ndb import sample_quality
    from dcgmm.app.tasks import train

    cfg = compose(spec.overrides, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    dcgmm_log = logging.getLogger("dcgmm")
    dcgmm_log.addHandler(handler)
    start = time.perf_counter()
    try:
        # what Lightning prints (the test metrics table) goes to the run's log, not the console
        with open(run_dir / "train.log", "a") as console, contextlib.redirect_stdout(console):
            metrics, objects = train(cfg)
    finally:
        dcgmm_log.removeHandler(handler)
        handler.close()
    module, datamodule = objects["model"], objects["datamodule"]
    speed = next(cb for cb in objects["callbacks"] if isinstance(cb, TrainingSpeed))
    record: dict[str, Any] = dict(
        metrics={k: _float(v) for k, v in sorted(metrics.items()) if k.startswith(("test/", "val/"))},
        speed=speed.as_dict(),
        K=int(module.stack.top_gmm.K),
        params=count_params(module),
        # where each GMM layer's annealing ended (sigma0 = 0.25 sqrt(2K), floor 0.01)
        sigma={module.stack.layers[i].name: float(schedule.sigma) for i, schedule in module.schedules.items()},
        top_sigma=float(module.schedules[module.stack.top_gmm.index].sigma),
        epochs=int(objects["trainer"].current_epoch),
        max_epochs=cfg.trainer.max_epochs,
        limit_train_batches=cfg.trainer.get("limit_train_batches"),
        split_sizes=datamodule.split_sizes(),
        classes=None if datamodule.classes is None else list(datamodule.classes),
    )
    if spec.kind == "main":
        module.eval()
        binning = ndb.get(spec.dataset, datamodule)
        sharpening = ndb_cfg.get("sharpening")
        options = {key: ndb_cfg[key] for key in ("top_s", "divisor") if ndb_cfg.get(key) is not None}
        quality = sample_quality(module.stack, binning, samples=int(ndb_cfg.get("samples", 1000)), options=options, sharpening=sharpening, seed=0)
        plain = quality["plain"]
        save_grid(plain.samples, run_dir / "samples.png")
        record["ndb"] = dict(plain.result.as_dict(), samples=len(plain.samples), top_s=plain.options.top_s, divisor=plain.options.divisor,
                             seconds=plain.seconds, reference=ndb.reference.get(spec.dataset))
        if "sharpened" in quality:  # the same draws (same seed), then sharpened below overlapping foldings
            sharp = quality["sharpened"]
            save_grid(sharp.samples, run_dir / "samples_sharpened.png")
            record["ndb_sharpened"] = dict(sharp.result.as_dict(), samples=len(sharp.samples), **sharpening, seconds=sharp.seconds)
    record["seconds"] = time.perf_counter() - start
    del objects, module, datamodule
    return record


def sample_em(gmm, n: int, ndb_cfg: dict, seed: int = 0):
    """Samples of a fitted diagonal GaussianMixture with the options of the DCGMM samples:
    a component drawn in proportion to the weights (the top_s largest when set), its standard
    deviations divided by ``divisor``, pixels clipped to [0, 1]."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    weights = gmm.weights_.copy()
    if ndb_cfg.get("top_s") is not None:
        keep = np.argsort(weights)[::-1][: int(ndb_cfg["top_s"])]
        mask = np.zeros_like(weights)
        mask[keep] = 1.0
        weights = weights * mask
    component = rng.choice(len(weights), size=n, p=weights / weights.sum())
    std = np.sqrt(gmm.covariances_[component]) / float(ndb_cfg.get("divisor", 1.0))
    x = np.clip(gmm.means_[component] + std * rng.standard_normal(std.shape), 0.0, 1.0)
    side = int(round(math.sqrt(x.shape[1])))
    return torch.from_numpy(x.astype(np.float32)).view(n, 1, side, side)


def run_em(spec: RunSpec, run_dir: Path, data_dir: Path, em_cfg: dict, ndb: NDBCache, ndb_cfg: dict, datamodule=None) -> dict:
    from dcgmm.results.baselines import em_baseline

    start = time.perf_counter()
    result = em_baseline(
        spec.dataset, K=spec.K, data_dir=data_dir, held_out=spec.held_out, n_train=em_cfg.get("n_train"),
        max_iter=int(em_cfg.get("max_iter", 100)), seed=0,
    )
    seconds = time.perf_counter() - start
    gmm = result["model"]
    record: dict[str, Any] = dict(
        K=int(result["K"]),
        params=int(gmm.means_.size + gmm.covariances_.size + gmm.weights_.size),
        cluster=result["cluster"], loglik=result["loglik"], bpd=result["bpd"], auroc=result.get("auroc"),
        train_images=result["train_images"], test_images=result["test_images"], outliers=result.get("outliers"),
        n_iter=int(gmm.n_iter_), converged=bool(gmm.converged_), max_iter=int(em_cfg.get("max_iter", 100)),
        seconds=seconds, images_per_second=gmm.n_iter_ * result["train_images"] / seconds,
    )
    if spec.kind == "main":
        run_dir.mkdir(parents=True, exist_ok=True)
        samples = sample_em(gmm, int(ndb_cfg.get("samples", 1000)), ndb_cfg)
        outcome = ndb.get(spec.dataset, datamodule).evaluate(samples)
        save_grid(samples, run_dir / "samples.png")
        record["ndb"] = dict(outcome.as_dict(), samples=len(samples), divisor=float(ndb_cfg.get("divisor", 1.0)))
    return record


def run_circuit(spec: RunSpec, run_dir: Path, data_dir: Path, settings: dict, ndb: NDBCache, ndb_cfg: dict, datamodule=None) -> dict:
    """The probabilistic-circuit peer (:func:`dcgmm.results.peers.circuit_baseline`) as a run record."""
    from dcgmm.results.peers import CircuitSettings, circuit_baseline

    samples = int(ndb_cfg.get("samples", 1000)) if spec.kind == "main" else 0
    result = circuit_baseline(spec.dataset, data_dir, spec.held_out, CircuitSettings(**settings), samples=samples)
    record: dict[str, Any] = {k: result[k] for k in ("params", "loglik", "bpd", "acc", "train_images", "test_images", "epochs", "seconds", "images_per_second", "settings")}
    record.update(auroc=result.get("auroc"), outliers=result.get("outliers"))
    if samples:
        run_dir.mkdir(parents=True, exist_ok=True)
        outcome = ndb.get(spec.dataset, datamodule).evaluate(result["samples"])
        save_grid(result["samples"], run_dir / "samples.png")
        record["ndb"] = dict(outcome.as_dict(), samples=samples)
    return record


# overrides that say where a run trains, not what it computes: left out of the records' key, so
# that records made on a CPU can be continued on a GPU machine (e.g. trainer=gpu data.on_device=true)
PLACEMENT = ("trainer=", "trainer.accelerator=", "trainer.devices=", "trainer.num_nodes=", "data.on_device=",
             "data.num_workers=", "data.pin_memory=", "torch_threads=")


def run_key(spec: RunSpec, preset: dict) -> str:
    """Hash of everything a run's record depends on (for --resume); placement overrides aside."""
    overrides = [o for o in spec.overrides if not o.lstrip("+~").startswith(PLACEMENT)]
    payload = dict(method=spec.method, overrides=overrides, K=spec.K, held_out=spec.held_out, dataset=spec.dataset)
    if spec.kind == "main":
        payload["ndb"] = preset["ndb"]
    if spec.method == "em":
        payload["em"] = preset["em"]
    if spec.method in PEER_ROWS:
        payload[spec.method] = preset[spec.method]
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- dry run
def dry_run(planner: Planner, compose: Composer) -> None:
    """Print the plan with a time estimate from a few timed SGD steps per model on random images."""
    from omegaconf import OmegaConf

    from dcgmm.app.utils import instantiate

    step_cost: dict[str, float] = {}
    batches: dict[tuple, int] = {}
    estimates: dict[tuple[str, str], float] = {}
    total = 0.0
    print(f"{'dataset':<8} {'run':<34} {'K':>5} {'params':>10} {'epochs':>6} {'steps':>7} {'s/step':>7} {'est. s':>7}")
    for spec in planner.runs.values():
        if spec.method == "em" or spec.method in PEER_ROWS:  # not SGD on a DCGMM stack: no step estimate
            K = "" if spec.K is None else spec.K
            print(f"{spec.dataset:<8} {spec.name:<34} {K:>5} {'':>10} {'':>6} {'':>7} {'':>7} {f'({spec.method})':>7}")
            continue
        cfg = compose(spec.overrides)
        model_key = json.dumps(OmegaConf.to_container(cfg.model, resolve=True), sort_keys=True, default=str)
        if model_key not in step_cost:
            step_cost[model_key] = time_sgd_steps(build_model(cfg), int(cfg.data.batch_size))
        classes = cfg.data.get("classes")
        data_key = (spec.dataset, str(None if classes is None else list(classes)), int(cfg.data.batch_size))
        if data_key not in batches:
            datamodule = instantiate(cfg.data)
            datamodule.setup("fit")
            batches[data_key] = math.ceil(len(datamodule.dataset("train")) / int(cfg.data.batch_size))
        per_epoch = batches[data_key]
        limit = cfg.trainer.get("limit_train_batches")
        if limit is not None:
            per_epoch = min(per_epoch, int(limit)) if isinstance(limit, int) else max(1, int(per_epoch * float(limit)))
        epochs = int(cfg.trainer.max_epochs)
        steps = per_epoch * epochs
        # + validation and test passes (about a third of a training step per batch) + set-up
        seconds = steps * step_cost[model_key] * 1.15 + 5.0
        total += seconds
        estimates[spec.key] = seconds
        print(f"{spec.dataset:<8} {spec.name:<34} {spec.K:>5} {spec.params:>10,} {epochs:>6} {steps:>7} {step_cost[model_key]:>7.3f} {seconds:>7.0f}")
    print(f"estimated SGD training: {total / 60:.1f} min (EM fits, NDB binning and sampling not included)")
    print("per row (a run shared by several rows counts for the first), seconds:")
    counted: set = set()
    per_row: dict[str, float] = {}
    for row in planner.rows:
        for key in row.keys:
            if key not in counted:
                counted.add(key)
                per_row[row.label] = per_row.get(row.label, 0.0) + estimates.get(key, 0.0)
    for label, seconds in per_row.items():
        print(f"  {label:<28} {seconds:>7.0f}")


def time_sgd_steps(module, batch_size: int, steps: int = 5) -> float:
    import torch

    torch.set_flush_denormal(True)
    x = torch.rand(batch_size, *module.stack.input_shape, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (batch_size,))
    from dcgmm.app.module import plain_sgd_step

    optimizer = module.configure_optimizers()
    plain_sgd_step(module, optimizer, x, y)
    start = time.perf_counter()
    for _ in range(steps):
        plain_sgd_step(module, optimizer, x, y)
    return (time.perf_counter() - start) / steps


# ------------------------------------------------------------------------------------- the table
def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


MAIN_METRICS = ("K", "params", "top_sigma", "purity", "nmi", "ari", "hungarian_acc", "dunn", "davies_bouldin", "acc", "loglik", "bpd", "ndb_ratio", "js",
                "ndb_sharpened", "js_sharpened", "train_seconds", "images_per_second")
OUTLIER_METRICS = ("auroc", "auroc_sum", "auroc_cross", "auroc_noise")


def run_values(record: dict, method: str) -> dict:
    """The numbers of one run record (None where a value does not exist)."""
    ndb, sharp = record.get("ndb") or {}, record.get("ndb_sharpened") or {}
    values: dict[str, Any] = dict(K=record.get("K"), params=record.get("params"), top_sigma=record.get("top_sigma"),
                                  ndb_ratio=ndb.get("ndb_ratio"), js=ndb.get("js"), ndb_sharpened=sharp.get("ndb_ratio"), js_sharpened=sharp.get("js"))
    if method in ("em", *PEER_ROWS):  # baselines: flat records (no clusters for a circuit)
        cluster = record.get("cluster") or {}
        values.update(acc=record.get("acc"), loglik=record.get("loglik"), bpd=record.get("bpd"), train_seconds=record.get("seconds"),
                      images_per_second=record.get("images_per_second"), auroc=record.get("auroc"))
    else:
        m = record.get("metrics") or {}
        cluster = {k.split("/")[-1]: v for k, v in m.items() if k.startswith("test/cluster/")}
        speed = record.get("speed") or {}
        cross = [v for k, v in m.items() if k.startswith("test/auroc_") and k.endswith("/top") and not k.startswith("test/auroc_noise/")]
        values.update(
            # log p(x) only where the model is a density over pixels (it has bits/dim)
            acc=m.get("test/acc"), loglik=m.get("test/loglik") if "test/bpd" in m else None, bpd=m.get("test/bpd"),
            train_seconds=speed.get("fit_seconds"), images_per_second=speed.get("images_per_second"),
            auroc=m.get("test/auroc"), auroc_sum=m.get("test/auroc/sum"), auroc_cross=cross[0] if cross else None,
            auroc_noise=m.get("test/auroc_noise/top"),
        )
    values.update(purity=cluster.get("purity"), nmi=cluster.get("nmi"), ari=cluster.get("ari"), hungarian_acc=cluster.get("hungarian_acc"),
                  dunn=cluster.get("dunn"), davies_bouldin=cluster.get("davies_bouldin"))
    return values


def mean_sd(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values) of the known values."""
    known = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not known:
        return None, None
    mean = sum(known) / len(known)
    sd = math.sqrt(sum((v - mean) ** 2 for v in known) / (len(known) - 1)) if len(known) > 1 else None
    return mean, sd


def row_values(row: RowSpec, records: dict, held_out: list[int], failures: dict | None = None) -> dict:
    """The numbers of one table row: per metric the mean over the row's seeds and its standard
    deviation (``<metric>_sd``, None with one seed); None where no finished run has the value."""
    main = [run_values(records[k], row.method) for k in row.main if k in records]
    outs = {c: [run_values(records[k], row.method) if k in records else {} for k in keys] for c, keys in row.outliers.items()}
    values: dict[str, Any] = dict(label=row.label, row_id=row.row_id, note=row.note, method=row.method, seeds=len(main), planned_seeds=len(row.main))
    if row.method in PEER_ROWS:
        values["not_applicable"] = ["nmi"]  # a circuit has no cluster ids
    for metric in MAIN_METRICS:
        found = [v.get(metric) for v in main]
        values[metric], values[f"{metric}_sd"] = mean_sd(found)
        values[f"{metric}_n"] = sum(1 for x in found if x is not None)  # records of an older code may lack a metric
    first = [v for v in outs.get(held_out[0], []) if v] if held_out else []
    for metric in ("K", "params", "top_sigma"):
        values[f"{metric}_outliers"] = mean_sd([v.get(metric) for v in first])[0]
    values["auroc"] = {c: mean_sd([v.get("auroc") for v in outs.get(c, [])])[0] for c in held_out}
    values["auroc_sd"] = {c: mean_sd([v.get("auroc") for v in outs.get(c, [])])[1] for c in held_out}
    seeds = max((len(v) for v in outs.values()), default=0)
    for metric in OUTLIER_METRICS:
        # per seed: the mean over the held-out classes (only when every class has its run)
        per_seed = []
        for j in range(seeds):
            found = [outs[c][j].get(metric) for c in held_out if j < len(outs.get(c, [])) and outs[c][j]]
            per_seed.append(sum(found) / len(found) if found and len(found) == len(held_out) and None not in found else None)
        values[f"{metric}_mean"], values[f"{metric}_mean_sd"] = mean_sd(per_seed)
        values[f"{metric}_mean_n"] = sum(1 for x in per_seed if x is not None)
    values["seconds_all_runs"] = sum((records.get(k) or {}).get("seconds", 0.0) for k in row.keys)
    values["runs_done"], values["runs_planned"] = sum(1 for k in row.keys if k in records), len(row.keys)
    values["failed"] = [k[1] for k in row.keys if k in (failures or {})]
    return values


def table_columns(held_out: list[int]) -> list[str]:
    return [
        "model", "seeds", "K", "params", "σ end", "K (outl.)", "params (outl.)", "σ end (outl.)", "purity", "NMI", "ARI", "Hung. acc", "Dunn", "DB",
        "clf acc", "log p(x)", "bits/dim", "NDB/B", "NDB/B sharp.", "JS", *[f"AUROC {c}" for c in held_out], "AUROC mean", "AUROC sum", "AUROC cross", "AUROC noise",
        "train s", "img/s", "runs",
    ]


def fmt_sd(value, sd, digits: int = 3, n: int | None = None, seeds: int | None = None) -> str:
    """``mean ± sd`` (the spread over seeds), or the value alone; ``(n of seeds)`` when fewer of the
    row's finished seeds have the value."""
    text = fmt(value, digits)
    if text != MISSING and sd is not None:
        text = f"{text} ± {sd:.{digits}f}"
    if text != MISSING and n is not None and seeds is not None and n < seeds:
        text += f" ({n} of {seeds})"
    return text


def table_line(values: dict, held_out: list[int]) -> list[str]:
    seconds, rate = values["train_seconds"], values["images_per_second"]
    v = values
    return [
        v["label"], f"{v['seeds']}/{v['planned_seeds']}", fmt(v["K"] if v["K"] is None else int(v["K"])), fmt(v["params"] if v["params"] is None else int(v["params"])),
        fmt(v["top_sigma"], 2), fmt(v["K_outliers"] if v["K_outliers"] is None else int(v["K_outliers"])),
        fmt(v["params_outliers"] if v["params_outliers"] is None else int(v["params_outliers"])), fmt(v["top_sigma_outliers"], 2),
        fmt_sd(v["purity"], v["purity_sd"]), fmt_sd(v["nmi"], v["nmi_sd"]), fmt_sd(v["ari"], v["ari_sd"]), fmt(v["hungarian_acc"]),
        fmt_sd(v["dunn"], v["dunn_sd"], 3, v["dunn_n"], v["seeds"]), fmt_sd(v["davies_bouldin"], v["davies_bouldin_sd"], 2, v["davies_bouldin_n"], v["seeds"]), fmt_sd(v["acc"], v["acc_sd"]), fmt_sd(v["loglik"], v["loglik_sd"], 1, v["loglik_n"], v["seeds"]), fmt_sd(v["bpd"], v["bpd_sd"], 3, v["bpd_n"], v["seeds"]), fmt_sd(v["ndb_ratio"], v["ndb_ratio_sd"], 2), fmt_sd(v["ndb_sharpened"], v["ndb_sharpened_sd"], 2),
        fmt(v["js"]), *[fmt_sd(v["auroc"][c], v["auroc_sd"][c]) for c in held_out], fmt_sd(v["auroc_mean"], v["auroc_mean_sd"]),
        fmt_sd(v["auroc_sum_mean"], v["auroc_sum_mean_sd"]), fmt(v["auroc_cross_mean"]), fmt(v["auroc_noise_mean"]),
        MISSING if seconds is None else f"{seconds:.1f}" if seconds < 100 else f"{seconds:.0f}",
        MISSING if rate is None or not math.isfinite(rate) else f"{rate:.0f}", f"{v['runs_done']}/{v['runs_planned']}",
    ]


def markdown_table(columns: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def machine_info(threads: int) -> dict:
    import lightning
    import sklearn
    import torch

    from dcgmm.training.runtime import cpu_model

    cpu = cpu_model()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(
        cpu=cpu, cores=cores, torch_threads=threads, torch=torch.__version__, lightning=lightning.__version__,
        sklearn=sklearn.__version__, python=platform.python_version(), platform=platform.platform(),
    )


def describe_epochs(rows: list[RowSpec], records: dict, kind: str) -> str:
    per_label: dict[str, str] = {}
    for row in rows:
        if row.method != "sgd":
            continue
        keys = list(row.main) if kind == "main" else [k for keys in row.outliers.values() for k in keys]
        for key in keys:
            rec = records.get(key) or {}
            if "max_epochs" in rec:
                text = f"{rec['max_epochs']}"
                if rec.get("limit_train_batches") is not None:
                    text += f" x {rec['limit_train_batches']} batches"
                per_label.setdefault(row.label, text)
    values = set(per_label.values())
    if not values:
        return MISSING
    if len(values) == 1:
        return f"{values.pop()} (every row)"
    return ", ".join(f"{label}: {text}" for label, text in per_label.items())


def data_description(dataset: str, rows: list[RowSpec], records: dict, preset: dict) -> str:
    main = next((records[k] for r in rows if r.method == "sgd" for k in r.main if (records.get(k) or {}).get("split_sizes")), None)
    parts = []
    if main:
        sizes = main["split_sizes"]
        per_epoch = main["speed"]["train_images"] / max(main["epochs"], 1) if main.get("epochs") else None
        held_back = f" ({sizes['val']:,} more for validation)" if sizes["val"] else " (no validation split, as published)"
        text = f"{sizes['train']:,} training images{held_back}, {sizes['test']:,} test images"
        if per_epoch is not None and per_epoch < sizes["train"]:
            text += f"; {per_epoch:,.0f} training images per epoch"
        parts.append(text)
    held = preset["held_out"]
    if sorted(held) == list(range(10)):
        parts.append("outlier runs: each of the 10 classes held out in turn (one run per class)")
    else:
        published = " (the published protocol)" if held == [0] else ""
        parts.append(
            f"outlier runs: only class {', '.join(map(str, held))} held out{published}, one run per class "
            "(a subset: the full preset holds out each of the 10 classes in turn)"
        )
    em = preset["em"]
    parts.append(
        "EM baseline: " + ("all training images" if em.get("n_train") is None else f"the first {int(em['n_train']):,} training images (a subset)")
        + f" of the kept classes, at most {int(em.get('max_iter', 100))} EM iterations"
    )
    return "; ".join(parts)


def verdict_rule(preset: dict) -> str:
    from dcgmm.results.verdict import CLAIMS

    floors = ", ".join(f"{c.label} {c.floor}" for c in CLAIMS)
    return (
        "Each DCGMM row against each flat GMM row of its dataset (same K; as many parameters), per claim: clustering by NMI, "
        "sampling by NDB/B (lower is better), outlier detection by the mean AUROC. **better** / **worse**: the difference exceeds "
        "the margin, twice the noise (standard deviations over the rows' seeds, added in quadrature) and at least a floor that "
        f"stands in for the noise of single-seed rows ({floors}); **equal** otherwise. Nothing here was tuned on the test set: "
        "every run uses the published settings of its experiment file."
    )


def write_report(
    report_dir: Path, preset_name: str, preset: dict, planner: Planner, records: dict, datasets: list[str], meta: dict, failures: dict | None = None
) -> tuple[Path, Path]:
    failures = failures or {}
    held_out = preset["held_out"]
    columns = table_columns(held_out)
    ndb_cfg = preset["ndb"]
    lines = [
        f"# DCGMM against flat GMMs and EM: results (preset `{preset_name}`)",
        "",
        f"Written by `{meta['command']}` (scripts/results_table.py); every number is also in `{preset_name}.json`.",
        "",
        f"- **preset**: `{preset_name}` (conf/results/{preset_name}.yaml): {preset.get('description', '')}",
        f"- **epochs**: runs on all classes: {describe_epochs(planner.rows, records, 'main')}; outlier runs: {describe_epochs(planner.rows, records, 'outliers')}",
    ]
    for dataset in datasets:
        rows = [r for r in planner.rows if r.dataset == dataset]
        lines.append(f"- **data, {DATASET_TITLES.get(dataset, dataset)}**: {data_description(dataset, rows, records, preset)}")
    top_s = "the whole prior" if ndb_cfg.get("top_s") is None else f"top_s={ndb_cfg['top_s']}"
    divisor = float(ndb_cfg.get("divisor", 1.0))
    references: dict[str, dict] = {}  # NDB of real test images, as recorded with the runs
    for spec in planner.runs.values():
        ref = ((records.get(spec.key) or {}).get("ndb") or {}).get("reference")
        if ref:
            references.setdefault(spec.dataset, ref)
    reference = "; ".join(f"{DATASET_TITLES.get(d, d)} {r['ndb_ratio']:.2f} (JS {r['js']:.3f})" for d, r in references.items())
    seeds = "; ".join(f"{DATASET_TITLES.get(d, d)}: {', '.join(map(str, planner.seeds(d)))}" for d in datasets)
    machines = sorted({r.get("machine") for r in records.values() if r.get("machine")})
    sharpening = ndb_cfg.get("sharpening")
    lines += [
        f"- **NDB**: {int(ndb_cfg.get('samples', 1000)):,} samples per row (components drawn from {top_s}, standard deviations "
        + ("as learned" if divisor == 1 else f"divided by {divisor:g}")
        + f"), B = {int(ndb_cfg.get('bins', 100))} k-means bins of the training split (cached in data/cache)"
        + (f"; for reference, {int(ndb_cfg.get('samples', 1000)):,} real test images: NDB/B {reference} (what a perfect model would score)" if reference else "")
        + (f"; **NDB/B sharp.**: the same draws sharpened below every folding whose patches overlap (rate {sharpening.get('rate')}, "
           f"{sharpening.get('iterations')} iterations, reconstruction weight {sharpening.get('reconstruction', 0.0)}; rows without such a folding: –)" if sharpening else ""),
        f"- **seeds** of the SGD rows (the table shows mean ± standard deviation over them): {seeds}; EM: one fit (seed 0)"
        + ("; circuit: one run (seed 0)" if any(r.method in PEER_ROWS for r in planner.rows) else ""),
        f"- **machine**: the runs ran on {', '.join(machines) if machines else meta['machine']['cpu']}; this report: {meta['machine']['cpu']}, "
        f"{meta['machine']['cores']} cores, {meta['machine']['torch_threads']} torch thread(s); "
        f"torch {meta['machine']['torch']}, lightning {meta['machine']['lightning']}, scikit-learn {meta['machine']['sklearn']}, Python {meta['machine']['python']}",
        f"- **progress**: {meta['finished']} of {meta['planned']} runs finished (records in `{Path(meta['records_dir']).relative_to(ROOT) if Path(meta['records_dir']).is_relative_to(ROOT) else meta['records_dir']}`; "
        f"`--resume` continues); training and evaluation time in the records: {sum(r.get('seconds', 0.0) for r in records.values()) / 3600:.2f} h",
        f"- **date**: {meta['date']}; wall time of this call: {meta['wall_seconds'] / 60:.1f} min",
        "",
    ]
    json_rows: dict[str, list[dict]] = {}
    for dataset in datasets:
        rows = [r for r in planner.rows if r.dataset == dataset]
        values = [row_values(r, records, held_out, failures) for r in rows]
        json_rows[dataset] = values
        lines += [f"## {DATASET_TITLES.get(dataset, dataset)}", "", markdown_table(columns, [table_line(v, held_out) for v in values]), ""]
    lines += ["## Verdict", "", verdict_rule(preset), ""]
    for dataset in datasets:
        lines += verdict_markdown(DATASET_TITLES.get(dataset, dataset), json_rows[dataset])
    lines += [
        "## Columns",
        "",
        "- **K**, **params**: components of the top GMM layer and parameters of the built model (GMM layers and classifier; "
        "EM: means, variances, weights) in the run on all classes; **(outl.)**: the same for the outlier runs "
        "(DCGMMs: K = 49 on the top layer, independent mode in the lower layers, as published).",
        "- **σ end**: the top GMM layer's annealing width at the end of training (start 0.25 sqrt(2K), floor 0.01; "
        "above ~0.3 the components are still smoothed over their grid neighbours, i.e. training stopped early).",
        "- **purity**, **NMI**, **ARI**: the top GMM layer's most responsible component per test image against the labels; "
        f"**Hung. acc**: accuracy under the best one-to-one matching, only when K = 10 classes ({MISSING} otherwise); **Dunn**, "
        "**DB**: label-free indices of the same clustering of the test images in pixel space (Dunn index: nearest pair across clusters "
        "over the widest pair within one, higher is better; Davies-Bouldin index, lower is better), the indices the authors' code carries.",
        "- **clf acc**: test accuracy of the linear classifier on the top GMM layer's responsibilities (EM: none; circuit: Bayes' "
        "rule on its class-conditional circuits).",
        "- **log p(x)**, **bits/dim**: mean test log-likelihood (nats per image, pixels u8 / 255) and test bits per dimension with "
        "uniform dequantisation, for the models that are densities over pixels (flat GMMs, EM, the circuit; "
        f"{MISSING} for DCGMMs, whose upper layers model responsibilities, not pixels).",
        f"- **Circuit** row: a circuit has no GMM layer and no cluster ids, so K, σ end and the clustering columns stay {MISSING}; "
        "its AUROC is by log p(x); it has no layers to sum or sharpen below (AUROC sum, NDB/B sharp.: "
        f"{MISSING}), and its outlier runs were not scored against the other dataset or noise (AUROC cross, noise: {MISSING}).",
        "- **NDB/B**, **JS**: share of statistically different bins (two-proportion z-test, alpha 0.05) and Jensen-Shannon "
        "divergence (nats) between the bin histograms of the samples and of the training split (lower is better).",
        "- **AUROC c**: outlier detection, trained without class c, its test images against the test inliers, scored by the "
        "top GMM layer's objective (outlier.score=top, as published; EM: log-likelihood); exact ROC AUC; **AUROC mean** over the "
        "held-out classes shown; **AUROC sum**: the same runs scored by the sum of every GMM layer's objective (outlier.score=sum); "
        "**AUROC cross**: the same models, the other dataset's 10,000 test images (MNIST <-> FashionMNIST) against the same inliers; "
        "**AUROC noise**: 10,000 uniform-noise images against the same inliers (both by the top layer's objective).",
        "- **seeds**: finished seeds / planned seeds of the row's runs on all classes; **runs**: finished / planned runs of the row.",
        "- **train s**: wall time of `trainer.fit` of the run on all classes (training, validation, checkpointing); **img/s**: "
        "training images per second of SGD step time. EM: fit and scoring time; img/s = EM iterations x images / s.",
        "",
        "## Rows",
        "",
    ]
    seen = set()
    for row in planner.rows:
        if (row.row_id, row.label) in seen:
            continue
        seen.add((row.row_id, row.label))
        lines.append(f"- **{row.label}**: {row.note}")
    lines += ["", "Reproduce one run: `python train.py experiment=<experiment> data=<mnist|fashion>` plus the overrides in the JSON file "
              f"(`runs[].overrides`); the preset's overrides: {json.dumps(preset['overrides'])}."]
    if planner.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in planner.notes]
    if failures:
        lines += ["", "## Failed runs (trained again by the next --resume)", ""] + [f"- {k[0]}/{k[1]}: {err}" for k, err in failures.items()]
    report_dir.mkdir(parents=True, exist_ok=True)
    md = report_dir / "RESULTS.md"
    md.write_text("\n".join(lines) + "\n")
    js = report_dir / f"{preset_name}.json"
    payload = dict(
        preset=preset_name, settings=preset, meta=meta, columns=columns, rows=json_rows, notes=planner.notes,
        runs=[{**(records.get(k) or {}), **dict(dataset=s.dataset, name=s.name, kind=s.kind, method=s.method, experiment=s.experiment,
                                                 overrides=s.overrides, held_out=s.held_out, seed=s.seed, planned_K=s.K, planned_params=s.params,
                                                 finished=k in records, **({"error": failures[k]} if k in failures else {}))}
              for k, s in planner.runs.items()],
    )
    js.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return md, js


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ------------------------------------------------------------------------------------------ main
class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a record is emitted (not the one at set-up), so that
    a caller that swaps stdout (a test harness, a notebook) never meets a closed stream."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def setup_logging() -> None:
    if not log.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    logging.getLogger("dcgmm").setLevel(logging.INFO)  # to each run's train.log (see run_sgd)
    import lightning.pytorch  # noqa: F401 - importing it sets its loggers' levels, set them after

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.command = "python scripts/results_table.py " + " ".join(argv)
    presets = available_presets()
    if args.preset not in presets:
        print(f"error: unknown preset {args.preset!r}; available presets: {', '.join(presets)} (conf/results/<preset>.yaml)", file=sys.stderr)
        return 2
    if args.threads < 1:
        print(f"error: --threads={args.threads} must be >= 1", file=sys.stderr)
        return 2
    try:
        preset = load_preset(args.preset)
    except PresetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    datasets = [d.strip() for d in args.datasets.split(",")] if args.datasets else list(preset["datasets"])
    unknown = [d for d in datasets if d not in DATASET_TITLES]
    if unknown:
        print(f"error: --datasets {unknown} unknown; use any of {', '.join(DATASET_TITLES)}", file=sys.stderr)
        return 2
    methods = ("sgd", "em", *PEER_ROWS)
    chosen = args.chosen_methods = {m.strip() for m in (args.methods or "").split(",") if m.strip()}  # empty: every method
    unknown = sorted(chosen - set(methods))
    if unknown:
        print(f"error: --methods {unknown} unknown; use any of {', '.join(methods)}", file=sys.stderr)
        return 2
    if not (args.report_only or args.dry_run):  # a peer that would train needs its library, checked before anything runs
        from dcgmm.errors import ConfigError
        from dcgmm.results.peers import require_peer

        for peer in [c for c in preset["compare"] if c in PEER_ROWS and (not chosen or c in chosen)]:
            try:
                require_peer(peer)
            except ConfigError as err:
                print(f"error: conf/results/{args.preset}.yaml: {err}", file=sys.stderr)
                return 2
    if args.out:
        report_dir = Path(args.out).resolve()
        runs_dir = report_dir / "runs"
        records_dir = report_dir / "records"
    else:
        # the published protocol is the table of record (results/RESULTS.md); other presets beside it
        report_dir = ROOT / ("logs/results/tiny" if args.preset == "tiny" else "results" if args.preset == "full" else f"results/{args.preset}")
        runs_dir = ROOT / "logs" / "results" / args.preset if args.preset != "tiny" else report_dir / "runs"
        records_dir = (ROOT / "results" / "runs" / args.preset) if args.preset != "tiny" else report_dir / "records"
    if args.preset == "tiny" and report_dir == (ROOT / "results").resolve():
        print("error: the tiny preset never writes to results/; pass another --out folder", file=sys.stderr)
        return 2

    setup_logging()
    wall_start = time.perf_counter()
    import torch
    from threadpoolctl import threadpool_limits

    from dcgmm.app.utils import prepare_environment

    prepare_environment()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with threadpool_limits(limits=args.threads):
            return run(args, preset, datasets, report_dir, runs_dir, wall_start, records_dir)
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside another program (tests)


class RecordError(ValueError):
    """A run record that cannot be mixed into this table (one-line message naming the file)."""


def record_path(records_dir: Path, spec: RunSpec) -> Path:
    return records_dir / spec.dataset / f"{spec.name}.json"


def load_records(planner: Planner, records_dir: Path, preset_name: str, preset: dict, resume: bool) -> tuple[dict, dict]:
    """The finished records of the planned runs, checked before anything trains, and the errors of
    the planned runs whose record says they failed: ``({key: record}, {key: error})``.

    Every record file below ``records_dir`` must come from this preset and this record version;
    a planned run's record must have been made with the run's settings (its key). Without
    ``resume`` no record may exist yet (nothing on disk is overwritten). Failed runs are trained
    again (their settings may have changed: their key is not checked).
    """
    planned = {record_path(records_dir, spec): spec for spec in planner.runs.values()}
    records: dict[tuple[str, str], dict] = {}
    failures: dict[tuple[str, str], str] = {}
    found = sorted(records_dir.rglob("*.json")) if records_dir.exists() else []
    if found and not resume:
        raise RecordError(
            f"{records_dir} already holds {len(found)} run record(s) (e.g. {found[0]}); pass --resume to continue from them, "
            "or move the folder away to start over"
        )
    for path in found:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise RecordError(f"{path}: not a readable run record ({type(err).__name__}); move it away and rerun") from None
        version, origin = record.get("record_version"), record.get("preset")
        if version != RECORD_VERSION:
            raise RecordError(
                f"{path}: written by another code version (record version {version}, this code writes {RECORD_VERSION}); "
                "move it away so that the run is trained again"
            )
        if origin != preset_name:
            raise RecordError(f"{path}: a record of preset {origin!r}, not {preset_name!r}; move it to results/runs/{origin}/ or away")
        spec = planned.get(path)
        if spec is None:
            continue  # a run this plan does not need (e.g. --datasets mnist): kept, not used
        if record.get("error"):
            failures[spec.key] = str(record["error"])
            continue
        if record.get("key") != run_key(spec, preset):
            raise RecordError(f"{path}: made with other settings than the run planned now (overrides, K or preset values changed); move it away to train it again")
        records[spec.key] = record
    return records, failures


def run(args, preset: dict, datasets: list[str], report_dir: Path, runs_dir: Path, wall_start: float, records_dir: Path) -> int:
    from dcgmm.data.sources import atomic_file

    compose = Composer(runs_dir)
    planner = Planner(preset, compose, list(args.overrides))
    log.info(f"preset {args.preset}: planning {', '.join(datasets)} (building the models to count parameters)")
    planner.plan(datasets)
    for note in planner.notes:
        log.info(f"note: {note}")
    if args.dry_run:
        dry_run(planner, compose)
        return 0
    try:
        records, failures = load_records(planner, records_dir, args.preset, preset, args.resume or args.report_only)
    except RecordError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    specs = planner.ordered_runs()
    todo = [spec for spec in specs if spec.key not in records and (not args.chosen_methods or spec.method in args.chosen_methods)]
    log.info(f"{len(specs)} runs, {len(specs) - len(todo)} finished ({records_dir}), outputs in {runs_dir}")
    data_dir = Path(compose(planner.sgd_overrides(FLAT_MAIN_BASE, datasets[0], "main", [])).paths.data_dir)
    ndb = NDBCache(preset["ndb"], data_dir)

    def report() -> tuple[Path, Path]:
        meta = dict(
            command=args.command.strip(),
            date=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            wall_seconds=time.perf_counter() - wall_start,
            machine=machine_info(args.threads),
            datasets=datasets,
            runs_dir=str(runs_dir),
            records_dir=str(records_dir),
            finished=sum(1 for spec in specs if spec.key in records),
            planned=len(specs),
        )
        return write_report(report_dir, args.preset, preset, planner, records, datasets, meta, failures)

    deadline = None if args.max_hours is None else wall_start + 3600.0 * args.max_hours
    failed = 0
    for i, spec in enumerate([] if args.report_only else todo, 1):
        if deadline is not None and time.perf_counter() > deadline:
            log.info(f"--max-hours={args.max_hours} reached: {len(todo) - i + 1} run(s) left for the next --resume")
            break
        run_dir = runs_dir / spec.dataset / spec.name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        log.info(f"[{i}/{len(todo)}] {spec.dataset} {spec.name} ({spec.method}, {spec.kind}, K={spec.K}" + (f", held out {spec.held_out}" if spec.held_out is not None else "") + ")")
        try:
            if spec.method == "sgd":
                record = run_sgd(spec, run_dir, compose, ndb, preset["ndb"])
            else:
                datamodule = None
                if spec.kind == "main" and not ndb.has(spec.dataset):
                    datamodule = all_classes_data(compose, planner, spec.dataset)
                if spec.method == "em":
                    record = run_em(spec, run_dir, data_dir, preset["em"], ndb, preset["ndb"], datamodule)
                else:
                    record = run_circuit(spec, run_dir, data_dir, preset["circuit"], ndb, preset["ndb"], datamodule)
        except Exception as err:  # noqa: BLE001 - one failed run must not lose the others
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            record = dict(error=f"{type(err).__name__}: {message}")
            log.error(f"    failed: {record['error']}")
            failed += 1
        record.update(
            record_version=RECORD_VERSION, preset=args.preset, key=run_key(spec, preset), dataset=spec.dataset, name=spec.name,
            seed=spec.seed, finished=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), machine=machine_info(args.threads)["cpu"],
        )
        path = record_path(records_dir, spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as out:  # a stop mid-write leaves no half record
            out.write((json.dumps(record, indent=2, default=_json_default) + "\n").encode())
        if not record.get("error"):
            records[spec.key] = record
            failures.pop(spec.key, None)
            log.info("    " + summary_line(record))
        else:
            failures[spec.key] = record["error"]
        md, js = report()  # after every run: the table so far
        gc.collect()
    md, js = report()
    left = sum(1 for spec in specs if spec.key not in records)
    log.info(f"wrote {md} and {js}: {len(specs) - left} of {len(specs)} runs finished" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def all_classes_data(compose: Composer, planner: Planner, dataset: str):
    """The set-up datamodule of ``dataset`` with all classes, as the runs on all classes see it."""
    from dcgmm.app.utils import instantiate

    datamodule = instantiate(compose(planner.sgd_overrides(FLAT_MAIN_BASE, dataset, "main", [])).data)
    datamodule.setup("fit")
    return datamodule


def summary_line(record: dict) -> str:
    if "metrics" in record:
        m = record["metrics"]
        parts = [f"fit {record['speed']['fit_seconds']:.1f} s", f"{record['speed']['images_per_second']:.0f} img/s"]
        for key, name in (("test/cluster/nmi", "NMI"), ("test/acc", "acc"), ("test/auroc", "AUROC")):
            if key in m:
                parts.append(f"{name} {m[key]:.3f}")
    else:
        if "n_iter" in record:  # EM
            parts = [f"EM {record['seconds']:.1f} s ({record['n_iter']} iterations)", f"NMI {record['cluster']['nmi']:.3f}"]
        else:  # a peer (circuit)
            parts = [f"fit {record['seconds']:.1f} s ({record['epochs']} epochs)", f"{record['images_per_second']:.0f} img/s",
                     f"bits/dim {record['bpd']:.3f}", f"acc {record['acc']:.3f}"]
        if record.get("auroc") is not None:
            parts.append(f"AUROC {record['auroc']:.3f}")
    if "ndb" in record:
        parts.append(f"NDB/B {record['ndb']['ndb_ratio']:.2f}")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())

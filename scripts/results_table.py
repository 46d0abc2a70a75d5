#!/usr/bin/env python
"""Regenerate the paper's comparison (DCGMM against flat GMMs and scikit-learn's EM) as tables.

    python scripts/results_table.py --preset small            # -> results/RESULTS.md, results/small.json
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
* ``em_same_k``: ``dcgmm.baselines.em_baseline`` (scikit-learn EM, diagonal) with the same K.

Every training run composes ``conf/train.yaml`` with Hydra's compose API and calls
``dcgmm.tasks.train``; its outputs (checkpoint, CSV log, ROC curve, sample grid, ``run.json``)
go to ``<runs>/<dataset>/<run>/`` (``logs/results/<preset>/`` or ``<out>/runs/``). The report is
``RESULTS.md`` and ``<preset>.json`` in ``results/`` (``--out`` folder instead when given; the
``tiny`` preset never writes to ``results/``).

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

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "conf"
PRESET_DIR = CONFIG_DIR / "results"
EXPERIMENT_DIR = CONFIG_DIR / "experiment"

# flat GMM experiments used when no conf/experiment/table_flat_k<K>[_outliers].yaml exists for a K
FLAT_MAIN_BASE = "table_flat_k25"
FLAT_OUTLIER_BASE = "table_flat_k49_outliers"
COMPARISONS = ("flat_same_k", "flat_same_params", "em_same_k")
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
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    parser.add_argument("--resume", action="store_true", help="reuse finished runs (run.json with the same settings) of an earlier call")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, parameter counts and a time estimate (times a few SGD steps per model); train nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every training run, e.g. trainer=gpu")
    return parser.parse_args(argv)


class PresetError(ValueError):
    """A preset file that cannot be used (one-line message)."""


def load_preset(name: str) -> dict:
    from omegaconf import OmegaConf

    path = PRESET_DIR / f"{name}.yaml"
    preset = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    for key in ("datasets", "dcgmm", "compare", "held_out", "overrides", "em", "ndb"):
        if key not in preset:
            raise PresetError(f"{path.relative_to(ROOT)} lacks the key {key!r}")
    unknown = [c for c in preset["compare"] if c not in COMPARISONS]
    if unknown:
        raise PresetError(f"{path.relative_to(ROOT)}: compare {unknown} unknown; use any of {list(COMPARISONS)}")
    for name_ in preset["dcgmm"]:
        for suffix in ("", "_outliers"):
            if not (EXPERIMENT_DIR / f"table_{name_}{suffix}.yaml").exists():
                raise PresetError(f"{path.relative_to(ROOT)}: dcgmm {name_!r} needs conf/experiment/table_{name_}{suffix}.yaml")
    preset["held_out"] = [int(c) for c in preset["held_out"]]
    preset["overrides"] = {k: list(preset["overrides"].get(k) or []) for k in ("all", "main", "outliers")}
    return preset


# ------------------------------------------------------------------------------------ composition
class Composer:
    """Composes conf/train.yaml like ``python train.py OVERRIDES`` with every output below ``runs_dir``."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = runs_dir

    def __call__(self, overrides: list[str], output_dir: Path | None = None):
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict

        output_dir = output_dir or self.runs_dir / "_plan"
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train.yaml", return_hydra_config=True, overrides=overrides)
        with open_dict(cfg):
            cfg.paths.root_dir = str(ROOT)
            cfg.paths.log_dir = str(self.runs_dir)
            cfg.paths.output_dir = str(output_dir)
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.job.num = 0
        HydraConfig().set_config(cfg)
        GlobalHydra.instance().clear()
        return cfg


def count_params(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def build_model(cfg):
    from dcgmm.utils import instantiate

    return instantiate(cfg.model)


# ------------------------------------------------------------------------------------------- plan
@dataclass
class RunSpec:
    """One training run (or EM fit) of the plan; shared by every row that needs it."""

    dataset: str
    name: str  # folder name below <runs>/<dataset>/
    kind: str  # "main" or "outliers"
    method: str  # "sgd" (train.py) or "em"
    experiment: str | None = None
    overrides: list[str] = field(default_factory=list)  # the complete Hydra override list
    K: int | None = None
    params: int | None = None
    held_out: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataset, self.name)


@dataclass
class RowSpec:
    dataset: str
    row_id: str
    label: str
    method: str
    main: tuple[str, str]  # run keys
    outliers: dict[int, tuple[str, str]]
    note: str = ""


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

    def sgd_overrides(self, experiment: str, dataset: str, kind: str, row: list[str]) -> list[str]:
        ov = self.preset["overrides"]
        return [f"experiment={experiment}", f"data={dataset}", CALLBACKS[kind], *RUN_OVERRIDES, *ov["all"], *ov[kind], *row, *self.extra]

    def model_info(self, overrides: list[str]) -> tuple[int, int]:
        """(top-layer K, parameter count) of the model the overrides compose."""
        key = tuple(overrides)
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

    def sgd_run(self, dataset: str, experiment: str, kind: str, row: list[str], name: str, held_out: int | None = None) -> tuple[str, str]:
        overrides = self.sgd_overrides(experiment, dataset, kind, row)
        K, params = self.model_info(overrides)
        return self.add_run(RunSpec(dataset, name, kind, "sgd", experiment, overrides, K, params, held_out))

    def flat_experiment(self, K: int, kind: str) -> str:
        name = f"table_flat_k{K}" + ("_outliers" if kind == "outliers" else "")
        if (EXPERIMENT_DIR / f"{name}.yaml").exists():
            return name
        base = FLAT_OUTLIER_BASE if kind == "outliers" else FLAT_MAIN_BASE
        note = f"no conf/experiment/{name}.yaml: the flat GMM with K={K} runs {base} with model.K={K}"
        if note not in self.notes:
            self.notes.append(note)
        return base

    def plan(self, datasets: list[str]) -> None:
        held_out = self.preset["held_out"]
        for dataset in datasets:
            for topology in self.preset["dcgmm"]:
                letter = PAPER_NAMES.get(topology, topology)
                main_exp, out_exp = f"table_{topology}", f"table_{topology}_outliers"
                main = self.sgd_run(dataset, main_exp, "main", [], main_exp)
                outliers = {c: self.sgd_run(dataset, out_exp, "outliers", [f"outlier.held_out={c}"], f"{out_exp}_held{c}", c) for c in held_out}
                k_main, p_main = self.runs[main].K, self.runs[main].params
                first_out = self.runs[outliers[held_out[0]]] if held_out else None
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
                        exp_m = self.flat_experiment(km, "main")
                        m = self.sgd_run(dataset, exp_m, "main", [f"model.K={km}"], f"flat_k{km}")
                        outs = {}
                        exp_o = None
                        if ko is not None:
                            exp_o = self.flat_experiment(ko, "outliers")
                            outs = {c: self.sgd_run(dataset, exp_o, "outliers", [f"model.K={ko}", f"outlier.held_out={c}"], f"flat_k{ko}_outliers_held{c}", c) for c in held_out}
                        self.rows.append(RowSpec(dataset, f"{comparison}:{topology}", label, "sgd", m, outs, f"experiments {exp_m}, {exp_o} with model.K={km}, {ko}"))
                    else:
                        m = self.add_run(RunSpec(dataset, f"em_k{k_main}", "main", "em", K=k_main))
                        outs = {c: self.add_run(RunSpec(dataset, f"em_k{k_out}_held{c}", "outliers", "em", K=k_out, held_out=c)) for c in held_out}
                        self.rows.append(RowSpec(dataset, f"em_same_k:{topology}", f"EM (sklearn), K as {letter}", "em", m, outs, f"dcgmm.baselines.em_baseline K={k_main}, {k_out}"))


# ---------------------------------------------------------------------------------- measurements
def sampling_options(stack, ndb_cfg: dict):
    from dcgmm.sampling import SamplingOptions

    smallest = min(layer.K for layer in stack.gmm_layers)
    top_s = smallest if ndb_cfg.get("top_s") is None else min(int(ndb_cfg["top_s"]), smallest)
    return SamplingOptions(top_s=top_s, divisor=float(ndb_cfg.get("divisor", 1.0)))


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

            from dcgmm.ndb import NDB

            train_x = datamodule.dataset("train").x
            n = self.cfg.get("train_images")
            images = train_x if n is None else train_x[: int(n)]
            bins, kms = int(self.cfg.get("bins", 100)), int(self.cfg.get("kmeans_samples", 20000))
            cache = self.data_dir / "cache" / f"ndb_{dataset}_B{bins}_n{len(images)}_k{kms}.npz"
            start = time.perf_counter()
            self._ndb[dataset] = NDB(images, bins=bins, kmeans_samples=kms, seed=0, cache=cache)
            self.train_images[dataset] = len(images)
            test_x = datamodule.dataset("test").x
            pick = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(0))[: int(self.cfg.get("samples", 1000))]
            real = self._ndb[dataset].evaluate(test_x[pick])
            self.reference[dataset] = dict(real.as_dict(), images=len(pick))
            log.info(f"  NDB bins of {dataset}: {bins} k-means bins of {len(images):,} training images ({time.perf_counter() - start:.1f} s, cache {cache.relative_to(ROOT) if cache.is_relative_to(ROOT) else cache})")
        return self._ndb[dataset]


def _float(value) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def save_grid(images, path: Path) -> None:
    from dcgmm.images import make_grid, save_png

    save_png(make_grid(images[:64], nrow=8), path)


def run_sgd(spec: RunSpec, run_dir: Path, compose: Composer, ndb: NDBCache, ndb_cfg: dict) -> dict:
    """Train and test one configuration with dcgmm.tasks.train; NDB of samples for main runs."""
    import torch

    from dcgmm.callbacks import TrainingSpeed
    from dcgmm.sampling import Sampler
    from dcgmm.tasks import train

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
        sample_start = time.perf_counter()
        module.eval()
        binning = ndb.get(spec.dataset, datamodule)
        options = sampling_options(module.stack, ndb_cfg)
        generator = torch.Generator().manual_seed(0)
        samples = Sampler(module.stack, options, generator).sample(int(ndb_cfg.get("samples", 1000)))
        result = binning.evaluate(samples)
        save_grid(samples, run_dir / "samples.png")
        record["ndb"] = dict(result.as_dict(), samples=len(samples), top_s=options.top_s, divisor=options.divisor, seconds=time.perf_counter() - sample_start)
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
    from dcgmm.baselines import em_baseline

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


def run_key(spec: RunSpec, preset: dict) -> str:
    """Hash of everything a run's record depends on (for --resume)."""
    payload = dict(method=spec.method, overrides=spec.overrides, K=spec.K, held_out=spec.held_out, dataset=spec.dataset)
    if spec.kind == "main":
        payload["ndb"] = preset["ndb"]
    if spec.method == "em":
        payload["em"] = preset["em"]
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- dry run
def dry_run(planner: Planner, compose: Composer) -> None:
    """Print the plan with a time estimate from a few timed SGD steps per model on random images."""
    from omegaconf import OmegaConf

    from dcgmm.utils import instantiate

    step_cost: dict[str, float] = {}
    batches: dict[tuple, int] = {}
    estimates: dict[tuple[str, str], float] = {}
    total = 0.0
    print(f"{'dataset':<8} {'run':<34} {'K':>5} {'params':>10} {'epochs':>6} {'steps':>7} {'s/step':>7} {'est. s':>7}")
    for spec in planner.runs.values():
        if spec.method == "em":
            print(f"{spec.dataset:<8} {spec.name:<34} {spec.K:>5} {'':>10} {'':>6} {'':>7} {'':>7} {'(EM)':>7}")
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
        for key in [row.main, *row.outliers.values()]:
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
    from dcgmm.module import plain_sgd_step

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


def row_values(row: RowSpec, records: dict, held_out: list[int]) -> dict:
    """The numbers of one table row from its runs' records (None where a run failed or a value
    does not exist)."""
    main = records.get(row.main) or {}
    outs = {c: records.get(key) or {} for c, key in row.outliers.items()}
    first_out = next(iter(outs.values()), {})
    values: dict[str, Any] = dict(label=row.label, row_id=row.row_id, note=row.note, method=row.method)
    values.update(K=main.get("K"), params=main.get("params"), K_outliers=first_out.get("K"), params_outliers=first_out.get("params"))
    values.update(top_sigma=main.get("top_sigma"), top_sigma_outliers=first_out.get("top_sigma"))
    if row.method == "em":
        cluster = main.get("cluster") or {}
        values.update(acc=None, train_seconds=main.get("seconds"), images_per_second=main.get("images_per_second"))
        auroc = {c: outs[c].get("auroc") for c in held_out if c in outs}
    else:
        m = main.get("metrics") or {}
        cluster = {k.split("/")[-1]: v for k, v in m.items() if k.startswith("test/cluster/")}
        speed = main.get("speed") or {}
        values.update(acc=m.get("test/acc"), train_seconds=speed.get("fit_seconds"), images_per_second=speed.get("images_per_second"))
        auroc = {c: (outs[c].get("metrics") or {}).get("test/auroc") for c in held_out if c in outs}
    values.update(purity=cluster.get("purity"), nmi=cluster.get("nmi"), ari=cluster.get("ari"), hungarian_acc=cluster.get("hungarian_acc"))
    ndb = main.get("ndb") or {}
    values.update(ndb_ratio=ndb.get("ndb_ratio"), js=ndb.get("js"))
    values["auroc"] = {c: auroc.get(c) for c in held_out}
    found = [v for v in values["auroc"].values() if v is not None]
    values["auroc_mean"] = sum(found) / len(found) if found and len(found) == len(held_out) else None
    values["seconds_all_runs"] = sum((records.get(k) or {}).get("seconds", 0.0) for k in [row.main, *row.outliers.values()])
    values["failed"] = [f"{k[1]}" for k in [row.main, *row.outliers.values()] if (records.get(k) or {}).get("error") or k not in records]
    return values


def table_columns(held_out: list[int]) -> list[str]:
    return [
        "model", "K", "params", "σ end", "K (outl.)", "params (outl.)", "σ end (outl.)", "purity", "NMI", "ARI", "Hung. acc", "clf acc",
        "NDB/B", "JS", *[f"AUROC {c}" for c in held_out], "AUROC mean", "train s", "img/s",
    ]


def table_line(values: dict, held_out: list[int]) -> list[str]:
    seconds, rate = values["train_seconds"], values["images_per_second"]
    return [
        values["label"], fmt(values["K"]), fmt(values["params"]), fmt(values["top_sigma"], 2),
        fmt(values["K_outliers"]), fmt(values["params_outliers"]), fmt(values["top_sigma_outliers"], 2),
        fmt(values["purity"]), fmt(values["nmi"]), fmt(values["ari"]), fmt(values["hungarian_acc"]), fmt(values["acc"]),
        fmt(values["ndb_ratio"], 2), fmt(values["js"]), *[fmt(values["auroc"][c]) for c in held_out], fmt(values["auroc_mean"]),
        MISSING if seconds is None else f"{seconds:.1f}" if seconds < 100 else f"{seconds:.0f}", MISSING if rate is None or not math.isfinite(rate) else f"{rate:.0f}",
    ]


def markdown_table(columns: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def machine_info(threads: int) -> dict:
    import lightning
    import sklearn
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(
        cpu=cpu, cores=cores, torch_threads=threads, torch=torch.__version__, lightning=lightning.__version__,
        sklearn=sklearn.__version__, python=platform.python_version(), platform=platform.platform(),
    )


def describe_epochs(rows: list[RowSpec], records: dict, kind: str) -> str:
    per_label: dict[str, str] = {}
    for row in rows:
        if row.method == "em":
            continue
        keys = [row.main] if kind == "main" else list(row.outliers.values())
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
    main = next((records.get(r.main) for r in rows if r.method == "sgd" and records.get(r.main, {}).get("split_sizes")), None)
    parts = []
    if main:
        sizes = main["split_sizes"]
        per_epoch = main["speed"]["train_images"] / max(main["epochs"], 1) if main.get("epochs") else None
        text = f"{sizes['train']:,} training images ({sizes['val']:,} more for validation), {sizes['test']:,} test images"
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


def write_report(report_dir: Path, preset_name: str, preset: dict, planner: Planner, records: dict, datasets: list[str], meta: dict) -> tuple[Path, Path]:
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
    reference = "; ".join(
        f"{DATASET_TITLES.get(d, d)} {r['ndb_ratio']:.2f} (JS {r['js']:.3f})" for d, r in meta.get("ndb_reference", {}).items()
    )
    lines += [
        f"- **NDB**: {int(ndb_cfg.get('samples', 1000)):,} samples per row (components drawn from {top_s}, standard deviations "
        + ("as learned" if divisor == 1 else f"divided by {divisor:g}")
        + f"), B = {int(ndb_cfg.get('bins', 100))} k-means bins of the training split (cached in data/cache)"
        + (f"; for reference, {int(ndb_cfg.get('samples', 1000)):,} real test images: NDB/B {reference} (what a perfect model would score)" if reference else ""),
        f"- **machine**: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, {meta['machine']['torch_threads']} torch thread(s); "
        f"torch {meta['machine']['torch']}, lightning {meta['machine']['lightning']}, scikit-learn {meta['machine']['sklearn']}, Python {meta['machine']['python']}",
        f"- **date**: {meta['date']}; **total wall time**: {meta['wall_seconds'] / 60:.1f} min ({meta['wall_seconds']:.0f} s)",
        "",
    ]
    json_rows: dict[str, list[dict]] = {}
    for dataset in datasets:
        rows = [r for r in planner.rows if r.dataset == dataset]
        values = [row_values(r, records, held_out) for r in rows]
        json_rows[dataset] = values
        lines += [f"## {DATASET_TITLES.get(dataset, dataset)}", "", markdown_table(columns, [table_line(v, held_out) for v in values]), ""]
    lines += [
        "## Columns",
        "",
        "- **K**, **params**: components of the top GMM layer and parameters of the built model (GMM layers and classifier; "
        "EM: means, variances, weights) in the run on all classes; **(outl.)**: the same for the outlier runs "
        "(DCGMMs: K = 49 on the top layer, independent mode in the lower layers, as published).",
        "- **σ end**: the top GMM layer's annealing width at the end of training (start 0.25 sqrt(2K), floor 0.01; "
        "above ~0.3 the components are still smoothed over their grid neighbours, i.e. training stopped early).",
        "- **purity**, **NMI**, **ARI**: the top GMM layer's most responsible component per test image against the labels; "
        f"**Hung. acc**: accuracy under the best one-to-one matching, only when K = 10 classes ({MISSING} otherwise).",
        "- **clf acc**: test accuracy of the linear classifier on the top GMM layer's responsibilities (EM: none).",
        "- **NDB/B**, **JS**: share of statistically different bins (two-proportion z-test, alpha 0.05) and Jensen-Shannon "
        "divergence (nats) between the bin histograms of the samples and of the training split (lower is better).",
        "- **AUROC c**: outlier detection, trained without class c, its test images against the test inliers, scored by the "
        "top GMM layer's objective (EM: log-likelihood); exact ROC AUC; **AUROC mean** over the held-out classes shown.",
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
    failures = [(k, r["error"]) for k, r in records.items() if r.get("error")]
    if failures:
        lines += ["", "## Failed runs", ""] + [f"- {k[0]}/{k[1]}: {err}" for k, err in failures]
    report_dir.mkdir(parents=True, exist_ok=True)
    md = report_dir / "RESULTS.md"
    md.write_text("\n".join(lines) + "\n")
    js = report_dir / f"{preset_name}.json"
    payload = dict(
        preset=preset_name, settings=preset, meta=meta, columns=columns, rows=json_rows, notes=planner.notes,
        runs=[dict(dataset=s.dataset, name=s.name, kind=s.kind, method=s.method, experiment=s.experiment, overrides=s.overrides,
                   held_out=s.held_out, planned_K=s.K, planned_params=s.params, **(records.get(k) or {})) for k, s in planner.runs.items()],
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
def setup_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
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
    if args.out:
        report_dir = Path(args.out).resolve()
        runs_dir = report_dir / "runs"
    else:
        report_dir = ROOT / ("logs/results/tiny" if args.preset == "tiny" else "results")
        runs_dir = ROOT / "logs" / "results" / args.preset if args.preset != "tiny" else report_dir / "runs"
    if args.preset == "tiny" and report_dir == (ROOT / "results").resolve():
        print("error: the tiny preset never writes to results/; pass another --out folder", file=sys.stderr)
        return 2

    setup_logging()
    wall_start = time.perf_counter()
    import torch
    from threadpoolctl import threadpool_limits

    from dcgmm.utils import prepare_environment

    prepare_environment()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with threadpool_limits(limits=args.threads):
            return run(args, preset, datasets, report_dir, runs_dir, wall_start)
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside another program (tests)


def run(args, preset: dict, datasets: list[str], report_dir: Path, runs_dir: Path, wall_start: float) -> int:
    compose = Composer(runs_dir)
    planner = Planner(preset, compose, list(args.overrides))
    log.info(f"preset {args.preset}: planning {', '.join(datasets)} (building the models to count parameters)")
    planner.plan(datasets)
    for note in planner.notes:
        log.info(f"note: {note}")
    if args.dry_run:
        dry_run(planner, compose)
        return 0

    data_dir = Path(compose(planner.sgd_overrides(FLAT_MAIN_BASE, datasets[0], "main", [])).paths.data_dir)
    ndb = NDBCache(preset["ndb"], data_dir)
    records: dict[tuple[str, str], dict] = {}
    specs = list(planner.runs.values())
    log.info(f"{len(specs)} runs, outputs in {runs_dir}")

    for i, spec in enumerate(specs, 1):
        run_dir = runs_dir / spec.dataset / spec.name
        key = run_key(spec, preset)
        saved = run_dir / "run.json"
        if args.resume and saved.exists():
            try:
                previous = json.loads(saved.read_text())
            except (OSError, ValueError):
                previous = {}
            if previous.get("key") == key and not previous.get("error"):
                records[spec.key] = previous
                log.info(f"[{i}/{len(specs)}] {spec.dataset} {spec.name}: reused {saved}")
                continue
        if run_dir.exists():
            shutil.rmtree(run_dir)
        log.info(f"[{i}/{len(specs)}] {spec.dataset} {spec.name} ({spec.method}, {spec.kind}, K={spec.K}" + (f", held out {spec.held_out}" if spec.held_out is not None else "") + ")")
        try:
            if spec.method == "sgd":
                record = run_sgd(spec, run_dir, compose, ndb, preset["ndb"])
            else:
                datamodule = None
                if spec.kind == "main" and not ndb.has(spec.dataset):
                    datamodule = all_classes_data(compose, planner, spec.dataset)
                record = run_em(spec, run_dir, data_dir, preset["em"], ndb, preset["ndb"], datamodule)
        except Exception as err:  # noqa: BLE001 - one failed run must not lose the others
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            record = dict(error=f"{type(err).__name__}: {message}")
            log.error(f"    failed: {record['error']}")
        record["key"] = key
        records[spec.key] = record
        run_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
        if not record.get("error"):
            log.info("    " + summary_line(record))
        gc.collect()

    meta = dict(
        command=args.command.strip(),
        date=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        wall_seconds=time.perf_counter() - wall_start,
        machine=machine_info(args.threads),
        datasets=datasets,
        runs_dir=str(runs_dir),
        ndb_reference=ndb.reference,
    )
    md, js = write_report(report_dir, args.preset, preset, planner, records, datasets, meta)
    failed = sum(1 for r in records.values() if r.get("error"))
    log.info(f"wrote {md} and {js} ({meta['wall_seconds'] / 60:.1f} min" + (f"; {failed} failed run(s)" if failed else "") + ")")
    return 1 if failed else 0


def all_classes_data(compose: Composer, planner: Planner, dataset: str):
    """The set-up datamodule of ``dataset`` with all classes, as the runs on all classes see it."""
    from dcgmm.utils import instantiate

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
        parts = [f"EM {record['seconds']:.1f} s ({record['n_iter']} iterations)", f"NMI {record['cluster']['nmi']:.3f}"]
        if record.get("auroc") is not None:
            parts.append(f"AUROC {record['auroc']:.3f}")
    if "ndb" in record:
        parts.append(f"NDB/B {record['ndb']['ndb_ratio']:.2f}")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())

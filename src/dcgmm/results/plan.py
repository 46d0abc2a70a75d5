"""A results preset (``conf/results/<preset>.yaml``) as a list of runs, each an ordinary training run.

For every dataset and every DCGMM topology ``<name>`` of the preset, the DCGMM row trains
``experiment=table_<name>`` on all classes and ``experiment=table_<name>_outliers`` once per
held-out class: the preset's ``held_out`` classes with every seed, and for a topology listed in
``every_class`` each other class too, with the first seed (:meth:`Planner.classes`,
:meth:`Planner.outlier_seeds`). Each name in ``compare`` adds a row compared with it:

* ``flat_same_k``: a flat GMM whose K is the DCGMM's top-layer K (outlier runs: the K of the
  outlier model's top layer), holding out the DCGMM's classes;
* ``flat_same_params``: a flat GMM with about as many parameters (counted on built models; K the
  nearest perfect square, as the annealing grid needs), holding out the preset's ``held_out``;
* ``em_same_k``: scikit-learn's EM (:func:`dcgmm.results.baselines.em_baseline`) with the same K,
  holding out the DCGMM's classes;
* ``circuit``: the probabilistic-circuit peer, one row per dataset (:mod:`dcgmm.results.peers`).

Each run is planned once however many rows use it, and is named ``<dataset>/<name>``: the name of
its Hydra job, of its run folder and of its record. SGD runs are ``python train.py`` with the
overrides in :attr:`RunSpec.overrides` (their experiment first); :func:`run_key` hashes what a
run's numbers depend on, so that a relaunch can tell a matching record from a stale one.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from dcgmm.app.config import TOPOLOGY_LETTERS, compose
from dcgmm.app.locations import conf_dir
from dcgmm.app.utils import instantiate
from dcgmm.core.sampling import SamplingOptions
from dcgmm.errors import ConfigError
from dcgmm.results.peers import CircuitSettings

__all__ = ["Planner", "RowSpec", "RunSpec", "available_presets", "load_preset", "run_key"]

FLAT_MAIN, FLAT_OUTLIERS = "table_flat", "table_flat_outliers"  # flat GMM experiments (the plan sets model.K)
DEFAULT_SEEDS = [12345]
COMPARISONS = ("flat_same_k", "flat_same_params", "em_same_k", "circuit")
PEER_ROWS = {"circuit": "Circuit (spflow RAT-SPN)"}  # peer comparisons: one row per dataset
DATASETS = {"mnist": "MNIST", "fashion": "FashionMNIST"}
CLASSES = 10  # classes of every dataset in DATASETS (the held-out classes of an every_class row)
# every training run: CSV log only, no progress bar or sample grids, the tested checkpoint kept
RUN_OVERRIDES = [
    "logger=csv",
    "~callbacks.progress_bar",
    "~callbacks.sample_images",
    "++trainer.enable_progress_bar=false",
    "callbacks.model_checkpoint.save_last=false",
    "task_name=results",
]
CALLBACKS = {"main": "callbacks=[default,top_layer,train_speed]", "outliers": "callbacks=[default,train_speed]"}
# overrides that say where a run trains, not what it computes: outside the records' key, so that
# a table begun on a CPU continues on a GPU machine (e.g. trainer=gpu data.on_device=true)
PLACEMENT = ("trainer=", "trainer.accelerator=", "trainer.devices=", "trainer.num_nodes=", "data.on_device=",
             "data.num_workers=", "data.pin_memory=", "torch_threads=")


def available_presets() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "results").glob("*.yaml"))


def sampler_settings(preset: dict, shown: str) -> dict[str, dict[str, dict[str, dict]]]:
    """The preset's ``samplers:`` (``{sampler: {row: file, or {dataset: file}}}``, a file of
    conf/sampler) checked and resolved: ``{sampler: {row: {dataset: {file, options}}}}`` with the
    file's top-down options, read once here (the jobs take them from the plan)."""
    rows, datasets = [*preset["dcgmm"], "flat"], list(preset["datasets"])
    files = sorted(p.stem for p in (conf_dir() / "sampler").glob("*.yaml"))
    out: dict = {}
    for sampler, per_row in (preset.get("samplers") or {}).items():
        if not isinstance(per_row, dict):
            raise ConfigError(f"{shown}: samplers.{sampler} must map rows to sampler files, e.g. samplers: {{{sampler}: {{dcgmm2: authors_B}}}}")
        for row, file in per_row.items():
            if row not in rows:
                raise ConfigError(f"{shown}: samplers.{sampler} names the row {row!r}; use any of {rows}")
            per_dataset = dict(file) if isinstance(file, dict) else {dataset: file for dataset in datasets}
            if set(per_dataset) - set(datasets):
                raise ConfigError(f"{shown}: samplers.{sampler}.{row} names the dataset(s) {sorted(set(per_dataset) - set(datasets))}; the preset's: {datasets}")
            for dataset, name in per_dataset.items():
                if name not in files:
                    raise ConfigError(f"{shown}: samplers.{sampler}.{row}: no sampler file {name!r} in conf/sampler; use any of {', '.join(files)}")
                options = OmegaConf.to_container(OmegaConf.load(conf_dir() / "sampler" / f"{name}.yaml"), resolve=True)
                try:
                    SamplingOptions.parse(options)
                except ConfigError as err:
                    raise ConfigError(f"{shown}: samplers.{sampler}.{row}: conf/sampler/{name}.yaml: {err}") from None
                out.setdefault(sampler, {}).setdefault(row, {})[dataset] = dict(file=name, options=options)
    return out


def load_preset(name: str) -> tuple[str, dict]:
    """``(preset name, settings)`` of ``conf/results/<name>.yaml`` or of a YAML file's path, checked."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else conf_dir() / "results" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(available_presets())} (or a path to a preset .yaml)")
    preset = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    shown = f"preset {path.stem}"
    for key in ("datasets", "dcgmm", "compare", "held_out", "overrides", "em", "ndb"):
        if key not in preset:
            raise ConfigError(f"{shown} ({path}) lacks the key {key!r}")
    unknown = [c for c in preset["compare"] if c not in COMPARISONS]
    if unknown:
        raise ConfigError(f"{shown}: compare {unknown} unknown; use any of {list(COMPARISONS)}")
    unknown = [d for d in preset["datasets"] if d not in DATASETS]
    if unknown:
        raise ConfigError(f"{shown}: datasets {unknown} unknown; use any of {list(DATASETS)}")
    try:
        preset["circuit"] = CircuitSettings(**(preset.get("circuit") or {})).__dict__
    except TypeError as err:
        raise ConfigError(f"{shown}: circuit: {err}".replace("CircuitSettings.__init__() ", "")) from None
    experiments = sorted(p.stem for p in (conf_dir() / "experiment").glob("table_*.yaml"))
    for topology in preset["dcgmm"]:
        for suffix in ("", "_outliers"):
            if f"table_{topology}{suffix}" not in experiments:
                raise ConfigError(f"{shown}: dcgmm {topology!r} needs the experiment table_{topology}{suffix}; experiments: {', '.join(experiments)}")
    preset["held_out"] = [int(c) for c in preset["held_out"]]
    preset["every_class"] = list(preset.get("every_class") or [])
    unknown = [t for t in preset["every_class"] if t not in preset["dcgmm"]]
    if unknown:
        raise ConfigError(f"{shown}: every_class {unknown} names no dcgmm of the preset; use any of {preset['dcgmm']}")
    preset["samplers"] = sampler_settings(preset, shown)
    seeds = preset.get("seeds") or DEFAULT_SEEDS
    if isinstance(seeds, list):
        seeds = {dataset: seeds for dataset in preset["datasets"]}
    if not isinstance(seeds, dict) or not all(isinstance(v, list) and v and all(isinstance(x, int) for x in v) for v in seeds.values()):
        raise ConfigError(f"{shown}: seeds must be a list of ints or a mapping dataset -> list of ints")
    preset["seeds"] = seeds
    preset["overrides"] = {k: list(preset["overrides"].get(k) or []) for k in ("all", "main", "outliers")}
    return path.stem, preset


@dataclass
class RunSpec:
    """One training run (or EM fit, or circuit) of the plan; shared by every row that needs it."""

    dataset: str
    name: str  # run folder and record: <dataset>/<name>
    kind: str  # "main" (all classes) or "outliers" (one class held out)
    method: str  # "sgd" (train.py), "em" or "circuit"
    experiment: str | None = None
    overrides: list[str] = field(default_factory=list)  # the complete Hydra override list of train.py
    K: int | None = None
    params: int | None = None
    held_out: int | None = None
    seed: int | None = None

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"


@dataclass
class RowSpec:
    dataset: str
    row_id: str
    label: str
    method: str
    main: list[str]  # run keys, one per seed
    outliers: dict[int, list[str]]  # held-out class -> run keys, one per seed
    note: str = ""

    @property
    def keys(self) -> list[str]:
        return [*self.main, *(k for keys in self.outliers.values() for k in keys)]


def run_key(spec: RunSpec, preset: dict) -> str:
    """Hash of everything a run's record depends on (placement overrides aside)."""
    overrides = [o for o in spec.overrides if not o.lstrip("+~").startswith(PLACEMENT)]
    payload = dict(method=spec.method, overrides=overrides, K=spec.K, held_out=spec.held_out, dataset=spec.dataset)
    if spec.kind == "main":
        payload["ndb"] = preset["ndb"]
    if spec.method == "em":
        payload["em"] = preset["em"]
    if spec.method in PEER_ROWS:
        payload[spec.method] = preset[spec.method]
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Planner:
    """Builds the DCGMM rows' models to read their top-layer K and parameter counts, derives the
    flat GMM, EM and circuit rows from them, and lists every run once (:attr:`runs`, :attr:`rows`)."""

    def __init__(self, preset: dict, extra: list[str] = (), log_dir: Path | None = None):
        self.preset, self.extra, self.log_dir = preset, list(extra), log_dir
        self.runs: dict[str, RunSpec] = {}
        self.rows: list[RowSpec] = []
        self._model_info: dict[tuple, tuple[int, int]] = {}
        self._flat_line: tuple[float, float] | None = None

    def compose(self, overrides: list[str]):
        return compose("train", overrides, log_dir=self.log_dir)

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
            module = instantiate(self.compose(overrides).model)
            self._model_info[key] = (int(module.stack.top_gmm.K), int(sum(p.numel() for p in module.parameters())))
        return self._model_info[key]

    def flat_k_for_params(self, dataset: str, target: int) -> int:
        """The flat GMM's K (a perfect square unless annealing is off) whose parameter count is
        nearest to ``target``; counts are read from built flat models (linear in K)."""
        base = self.sgd_overrides(FLAT_MAIN, dataset, "main", [])
        if self._flat_line is None:
            p1, p4 = self.model_info(base + ["model.K=1"])[1], self.model_info(base + ["model.K=4"])[1]
            slope = (p4 - p1) / 3.0
            self._flat_line = (slope, p1 - slope)
        slope, intercept = self._flat_line
        k_real = max((target - intercept) / slope, 1.0)
        if bool(self.compose(base).model.get("anneal", True)):
            root = int(math.floor(math.sqrt(k_real)))
            candidates = [r * r for r in (root, root + 1) if r >= 1]
        else:
            candidates = [max(1, int(math.floor(k_real))), int(math.ceil(k_real))]
        return min(candidates, key=lambda k: abs(slope * k + intercept - target))

    def add(self, spec: RunSpec) -> str:
        self.runs.setdefault(spec.key, spec)
        return spec.key

    def classes(self, topology: str) -> list[int]:
        """The classes that the outlier runs of ``topology``'s row hold out, one at a time: the
        preset's ``held_out``, then, for a topology in ``every_class``, every other class."""
        held = self.preset["held_out"]
        if topology not in self.preset.get("every_class", ()):
            return list(held)
        return [*held, *(c for c in range(CLASSES) if c not in held)]

    def outlier_seeds(self, dataset: str, held_out: int) -> list[int]:
        """Seeds of the outlier runs of one held-out class: every seed of the dataset for the
        preset's ``held_out`` classes (their seed-to-seed spread), the first for the others."""
        seeds = self.seeds(dataset)
        return seeds if held_out in self.preset["held_out"] else seeds[:1]

    def sgd_runs(self, dataset: str, experiment: str, kind: str, row: list[str], name: str, held_out: int | None = None) -> list[str]:
        """One run per seed (:meth:`outlier_seeds` for an outlier run): ``<name>_s<seed>``."""
        keys = []
        for seed in self.seeds(dataset) if held_out is None else self.outlier_seeds(dataset, held_out):
            overrides = self.sgd_overrides(experiment, dataset, kind, row, seed)
            K, params = self.model_info(overrides)
            keys.append(self.add(RunSpec(dataset, f"{name}_s{seed}", kind, "sgd", experiment, overrides, K, params, held_out, seed)))
        return keys

    def plan(self, datasets: list[str] | None = None) -> Planner:
        for dataset in datasets or self.preset["datasets"]:
            for topology in self.preset["dcgmm"]:
                held_out = self.classes(topology)
                letter = TOPOLOGY_LETTERS.get(topology, topology)
                main_exp, out_exp = f"table_{topology}", f"table_{topology}_outliers"
                main = self.sgd_runs(dataset, main_exp, "main", [], main_exp)
                outliers = {c: self.sgd_runs(dataset, out_exp, "outliers", [f"outlier.held_out={c}"], f"{out_exp}_held{c}", c) for c in held_out}
                k_main, p_main = self.runs[main[0]].K, self.runs[main[0]].params
                first = self.runs[outliers[held_out[0]][0]] if held_out else None
                k_out, p_out = (first.K, first.params) if first else (None, None)
                self.rows.append(RowSpec(dataset, topology, f"{letter} ({topology})", "sgd", main, outliers, f"experiments {main_exp}, {out_exp}"))
                for comparison in self.preset["compare"]:
                    if comparison in ("flat_same_k", "flat_same_params"):
                        if comparison == "flat_same_k":
                            km, ko, label = k_main, k_out, f"A flat, K as {letter}"
                        else:
                            km = self.flat_k_for_params(dataset, p_main)
                            ko = self.flat_k_for_params(dataset, p_out) if p_out else None
                            label = f"A flat, params ≈ {letter}"
                        m = self.sgd_runs(dataset, FLAT_MAIN, "main", [f"model.K={km}"], f"flat_k{km}")
                        outs, exp_o = {}, None
                        if ko is not None:
                            exp_o = FLAT_OUTLIERS
                            # the same K holds out the DCGMM's classes; as many parameters, the preset's held_out
                            classes = held_out if comparison == "flat_same_k" else self.preset["held_out"]
                            outs = {c: self.sgd_runs(dataset, exp_o, "outliers", [f"model.K={ko}", f"outlier.held_out={c}"], f"flat_k{ko}_outliers_held{c}", c)
                                    for c in classes}
                        self.rows.append(RowSpec(dataset, f"{comparison}:{topology}", label, "sgd", m, outs, f"experiments {FLAT_MAIN}, {exp_o} with model.K={km}, {ko}"))
                    elif comparison == "em_same_k":
                        m = [self.add(RunSpec(dataset, f"em_k{k_main}", "main", "em", K=k_main))]
                        outs = {c: [self.add(RunSpec(dataset, f"em_k{k_out}_held{c}", "outliers", "em", K=k_out, held_out=c))] for c in held_out}
                        self.rows.append(RowSpec(dataset, f"em_same_k:{topology}", f"EM (sklearn), K as {letter}", "em", m, outs,
                                                 f"dcgmm.results.baselines.em_baseline K={k_main}, {k_out}"))
            for peer, label in PEER_ROWS.items():
                if peer in self.preset["compare"]:
                    m = [self.add(RunSpec(dataset, peer, "main", peer))]
                    outs = {c: [self.add(RunSpec(dataset, f"{peer}_held{c}", "outliers", peer, held_out=c))] for c in self.preset["held_out"]}
                    self.rows.append(RowSpec(dataset, peer, label, peer, m, outs, f"dcgmm.results.peers.{peer}_baseline"))
        return self

    def ordered_runs(self) -> list[RunSpec]:
        """The runs in launch order: every row's first seed before any second seed, runs on all
        classes before outlier runs, the peers last, so that a stopped table has each row once."""

        def order(spec: RunSpec) -> tuple[int, int]:
            seeds = self.seeds(spec.dataset)
            rank = len(seeds) if spec.method in PEER_ROWS else 0 if spec.seed is None else seeds.index(spec.seed)
            return rank, 0 if spec.kind == "main" else 1

        return sorted(self.runs.values(), key=order)

    def as_dict(self) -> dict:
        return dict(runs={k: asdict(s) for k, s in self.runs.items()}, rows=[asdict(r) for r in self.rows])

    @classmethod
    def from_dict(cls, preset: dict, data: dict) -> Planner:
        planner = cls(preset)
        planner.runs = {k: RunSpec(**s) for k, s in data["runs"].items()}
        planner.rows = [RowSpec(**{**r, "outliers": {int(c): v for c, v in r["outliers"].items()}}) for r in data["rows"]]
        return planner

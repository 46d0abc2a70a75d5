"""The ``results`` entry point: a preset as one Hydra multirun, then the table from the records.

    python results.py preset=small                        # every core a job (joblib), one torch thread each
    python results.py preset=full hydra/launcher=slurm hydra.launcher.partition=gpu trainer=gpu
    python results.py preset=small hydra/launcher=basic   # one run after another in this process
    python results.py preset=full mode=report             # the table from the records alone
    python results.py preset=full mode=plan               # the runs and their state; nothing launched
    python results.py preset=small mode=evaluate label=ndb_top3 'callbacks=[eval,ndb]' callbacks.ndb.top_s=3
    python results.py preset=full mode=samples            # NDB of every kept main model under each sampler

It plans the preset (:mod:`dcgmm.results.plan`), checks the records already there (a record of
another code version, preset or settings: one line naming the file, exit status 2, nothing
touched), writes the plan to ``<runs>/plan.json`` and launches the runs without a finished record
as the jobs of ``python -m dcgmm.results.jobs -m run=<dataset>/<name>,...`` through the chosen
Hydra launcher. When the launcher returns, the table is written from the records
(:func:`dcgmm.results.report.write_report`).

Arguments are ``key=value`` words. The entry point's own: ``preset`` (a name of conf/results or a
.yaml path; default ``small``), ``datasets`` and ``methods`` (subsets: ``datasets=mnist``,
``methods=[sgd,em]``), ``kind`` (``main``: the runs on all classes, ``outliers``: the outlier runs), ``classes``
(the outlier runs of these held-out classes only: ``classes=0``, ``classes=[1,2]``), ``mode``
(``train``, ``evaluate``, ``samples``, ``report``, ``plan``), ``label`` (evaluate mode:
the name of the figures in the records), ``out`` (a folder for the report, records and runs) and
``threads`` (torch threads per job, default 1). ``hydra/...`` and ``hydra.*`` words go to the
multirun; every other word is an override of every training run (evaluate mode: of
``evaluate.yaml``), and ``trainer`` words also size the launcher's jobs.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

from dcgmm.app.locations import project_root
from dcgmm.app.utils import prepare_environment
from dcgmm.errors import ConfigError
from dcgmm.results import jobs
from dcgmm.results.peers import require_peer
from dcgmm.results.plan import CLASSES, DATASETS, PEER_ROWS, Planner, load_preset
from dcgmm.results.records import check_records, code_version, machine_info, now, write_json
from dcgmm.results.report import write_report

__all__ = ["main"]

# the launchers' packages: a launcher whose package is missing is one line before anything is planned
SUBMITIT = {"hydra_plugins.hydra_submitit_launcher": "hydra-submitit-launcher", "submitit": "submitit"}
LAUNCHER_PACKAGES = {"joblib": {"hydra_plugins.hydra_joblib_launcher": "hydra-joblib-launcher"}, "slurm": SUBMITIT,
                     "submitit_local": SUBMITIT, "submitit_slurm": SUBMITIT}
OWN = ("preset", "datasets", "methods", "kind", "classes", "mode", "label", "out", "threads")
MODES = ("train", "evaluate", "samples", "report", "plan")
KEPT_MODES = ("evaluate", "samples")  # modes that work on the kept models of finished runs


def _words(value: str) -> list[str]:
    return [w.strip() for w in value.strip("[]").split(",") if w.strip()]


def parse(argv: list[str]) -> tuple[dict, list[str], list[str]]:
    """``(own settings, multirun words, run overrides)`` of the command line."""
    own: dict = dict(preset="small", datasets=None, methods=None, kind=None, classes=None, mode="train", label=None, out=None, threads="1")
    launcher, runs = [], []
    for word in argv:
        key, _, value = word.partition("=")
        if key in OWN:
            own[key] = value
        elif key.lstrip("+~").startswith("hydra.sweep"):
            raise ConfigError(f"{word}: the results entry point sets the sweep folder itself; give out=<folder> instead")
        elif key.startswith(("hydra/", "hydra.", "+hydra", "~hydra")):
            launcher.append(word)
        elif word.startswith("-"):
            raise ConfigError(f"{word}: the results entry point takes key=value words only (it launches the multirun itself)")
        else:
            runs.append(word)
            if key.lstrip("+~").startswith("trainer"):
                launcher.append(word)
    chosen = next((w.split("=", 1)[1] for w in launcher if w.startswith("hydra/launcher=")), "joblib")
    for module, package in LAUNCHER_PACKAGES.get(chosen, {}).items():
        if not _installed(module):
            raise ConfigError(f"hydra/launcher={chosen} needs the package {package}, which is not installed: pip install {package}")
    own["launcher"] = chosen
    if own["mode"] not in MODES:
        raise ConfigError(f"mode={own['mode']} unknown; use one of {', '.join(MODES)}")
    if own["mode"] == "evaluate" and not own["label"]:
        raise ConfigError("mode=evaluate needs label=<name>: the record key its figures are stored under")
    if own["kind"] not in (None, "main", "outliers"):
        raise ConfigError(f"kind={own['kind']} unknown; use main (the runs on all classes) or outliers (the outlier runs)")
    if own["classes"] is not None:
        words = _words(own["classes"])
        if not words or not all(w.isdigit() and int(w) < CLASSES for w in words):
            raise ConfigError(f"classes={own['classes']}: give held-out classes from 0 to {CLASSES - 1}, e.g. classes=0 or classes=[0,1]")
        own["classes"] = {int(w) for w in words}
    if not own["threads"].isdigit() or int(own["threads"]) < 1:
        raise ConfigError(f"threads={own['threads']} must be an integer >= 1")
    return own, launcher, runs


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def locations(preset_name: str, out: str | None) -> tuple[Path, Path, Path]:
    """``(report, records, runs)`` folders: the published protocol reports to results/, other presets
    to results/<preset>/, the tiny smoke test and ``out=`` elsewhere; records are committed, runs are logs."""
    root = project_root()
    if out:
        base = Path(out).resolve()
        if preset_name == "tiny" and base == (root / "results").resolve():
            raise ConfigError("the tiny preset never writes to results/; give another out= folder")
        return base, base / "records", base / "runs"
    if preset_name == "tiny":
        base = root / "logs" / "results" / "tiny"
        return base, base / "records", base / "runs"
    report = root / "results" if preset_name == "full" else root / "results" / preset_name
    return report, root / "results" / "runs" / preset_name, root / "logs" / "results" / preset_name


def launch(words: list[str]) -> None:
    """``python -m dcgmm.results.jobs -m WORDS`` in this process (the launcher's jobs may run elsewhere)."""
    from hydra.core.global_hydra import GlobalHydra

    argv = sys.argv
    GlobalHydra.instance().clear()
    sys.argv = ["dcgmm.results.jobs", "-m", *words]
    try:
        jobs._main()
    except SystemExit as stop:  # Hydra reports a failed launch and exits
        if stop.code:
            raise ConfigError(f"the launcher failed (exit status {stop.code}); see the message above") from None
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    prepare_environment(argv)
    try:
        own, launcher, overrides = parse(argv)
        name, preset = load_preset(own["preset"])
        report_dir, records_dir, runs_dir = locations(name, own["out"])
        datasets = _words(own["datasets"]) if own["datasets"] else list(preset["datasets"])
        unknown = [d for d in datasets if d not in DATASETS]
        if unknown:
            raise ConfigError(f"datasets {unknown} unknown; use any of {', '.join(DATASETS)}")
        methods = set(_words(own["methods"] or "")) or {"sgd", "em", *PEER_ROWS}
        if methods - {"sgd", "em", *PEER_ROWS}:
            raise ConfigError(f"methods {sorted(methods - {'sgd', 'em', *PEER_ROWS})} unknown; use any of sgd, em, {', '.join(PEER_ROWS)}")
        if own["mode"] == "train":
            for peer in [c for c in preset["compare"] if c in PEER_ROWS and c in methods]:
                require_peer(peer)
        if own["mode"] == "samples" and overrides:
            raise ConfigError(f"mode=samples takes no run overrides ({' '.join(overrides)}); the samplers are the preset's (samplers:, conf/sampler)")
        # every dataset of the preset is planned and checked (the table covers them all); datasets= picks the runs
        planned = list(dict.fromkeys([*preset["datasets"], *datasets]))
        planner = Planner(preset, [] if own["mode"] in KEPT_MODES else overrides, runs_dir).plan(planned)
        records, failures = check_records(planner, records_dir, name, same_settings=own["mode"] not in KEPT_MODES)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    specs = [s for s in planner.ordered_runs() if s.dataset in datasets and s.method in methods and own["kind"] in (None, s.kind)
             and (own["classes"] is None or s.kind == "main" or s.held_out in own["classes"])]
    todo, without = [s.key for s in specs if s.key not in records] if own["mode"] == "train" else [], []
    if own["mode"] in KEPT_MODES:  # the kept models; records whose model is gone are listed and left as they are
        if own["mode"] == "samples":  # the models trained on all classes, EM's fitted mixtures too
            specs = [s for s in specs if s.kind == "main" and s.method in ("sgd", "em")]
        else:  # evaluate.yaml tests the SGD models' checkpoints
            specs = [s for s in specs if s.method == "sgd"]
        kept = {s.key for s in specs if s.key in records and jobs.kept_checkpoint(records[s.key], runs_dir)}
        todo = [s.key for s in specs if s.key in kept]
        without = [s.key for s in specs if s.key in records and s.key not in kept]
        if own["mode"] == "samples":  # a relaunch measures only the models without figures of the preset's samplers as they are now
            todo = [s.key for s in specs if s.key in kept and not jobs.sampled_as_planned(records[s.key], planner.preset, s)]
    print(f"preset {name}: {len(planner.runs)} runs, {len(records)} with a finished record ({records_dir}); {len(todo)} to {own['mode']}", flush=True)
    if own["mode"] == "plan":  # the runs and their state; nothing is launched or written
        for s in specs:
            state = "finished" if s.key in records else "failed: " + failures[s.key] if s.key in failures else "to train"
            print(f"  {s.key:<48} {s.method:<8} K={s.K!s:<5} params={s.params!s:<10} {state}")
        return 0
    for key in without:
        print(f"  {key}: no kept checkpoint (its record was made before models were kept, or the model was moved); not {'sampled' if own['mode'] == 'samples' else 'evaluated'}")
    if todo:
        plan_file = runs_dir / "plans" / f"{dt.datetime.now():%Y-%m-%d_%H-%M-%S-%f}_{os.getpid()}.json"  # one per launch: queued jobs read their own
        if any(c in str(runs_dir) for c in "'$\\"):
            print(f"error: the runs folder {runs_dir} has a quote, $ or backslash in its path, which Hydra's override words cannot carry; give another out=", file=sys.stderr)
            return 2
        write_json(plan_file, dict(preset=name, settings=preset, records_dir=str(records_dir), runs_dir=str(runs_dir), code=code_version(),
                                   samples_dir=str(report_dir / "samples"), overrides=overrides if own["mode"] == "evaluate" else [], **planner.as_dict()))
        sweep = runs_dir if own["mode"] == "train" else runs_dir / "_samples" if own["mode"] == "samples" else runs_dir / "_evaluations" / own["label"]
        words = [f"plan='{plan_file}'", f"run={','.join(todo)}", f"hydra.sweep.dir='{sweep}'", f"mode={own['mode']}", f"threads={own['threads']}"]
        if own["label"]:
            words.append(f"label={own['label']}")
        if own["launcher"] == "joblib" and not any(w.startswith("hydra.launcher.n_jobs=") for w in launcher):
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            words.append(f"hydra.launcher.n_jobs={max(1, min(cores // int(own['threads']), len(todo)))}")
        try:
            launch([*words, *launcher])
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        try:
            records, failures = check_records(planner, records_dir, name, same_settings=own["mode"] not in KEPT_MODES)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if own["mode"] == "evaluate":  # the figures are in the records; the table stays as it is
        failed = {k: e["error"] for k in todo if "error" in (e := records.get(k, {}).get("evaluations", {}).get(own["label"], {"error": "no figures written"}))}
        print(f"evaluated {len(todo) - len(failed)} of {len(todo)} kept models; figures in {records_dir}/<dataset>/<run>.json, evaluations.{own['label']}"
              + "".join(f"\n  failed: {k}: {e}" for k, e in failed.items()))
        return 1 if failed else 0
    if own["mode"] == "samples":
        failed = {k: error for k in todo if (error := sampled(records.get(k, {}), plan_file.name))}
        print(f"measured the samples of {len(todo) - len(failed)} of {len(todo)} kept models; figures in {records_dir}/<dataset>/<run>.json, samplers; "
              f"grids in {_shown(report_dir / 'samples')}" + "".join(f"\n  failed: {k}: {e}" for k, e in failed.items()))
        if failed:
            return 1
    meta = dict(command=" ".join(["python results.py", *argv]), date=now(), wall_seconds=time.perf_counter() - start,
                machine=machine_info(int(own["threads"])), datasets=datasets, runs_dir=_shown(runs_dir), records_dir=_shown(records_dir),
                finished=len(records), planned=len(planner.runs))
    md, js = write_report(report_dir, name, planner, records, failures, meta)
    print(f"wrote {md} and {js}: {len(records)} of {len(planner.runs)} runs finished" + "".join(f"\n  failed: {k}: {e}" for k, e in failures.items()))
    return 1 if failures else 0


def sampled(record: dict, stamp: str) -> str | None:
    """Why the samples pass ``stamp`` left no figures in ``record`` (None: it left them): the
    error it wrote, or none written (a job that was killed writes nothing)."""
    figures = record.get("samplers") or {}
    if figures.get("error"):
        return str(figures["error"])
    if not figures or any(f.get("stamp") != stamp for f in figures.values()):
        return "no figures written by this pass (the job stopped before it wrote them)"
    return None


def _shown(path: Path) -> str:
    root = project_root().resolve()
    return str(path.relative_to(root)) if path.resolve().is_relative_to(root) else str(path)

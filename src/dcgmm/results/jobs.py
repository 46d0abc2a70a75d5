"""One job of a results multirun: train one planned run and write its record, or evaluate a kept
model (its test metrics, or its samples under each sampler of the preset) and add the figures to
its record.

:func:`run_job` is the Hydra task function of ``conf/results_job.yaml``; the launcher of the
multirun (joblib here, submitit on SLURM) calls it once per run with ``run=<dataset>/<name>``.
A job reads its run from the plan file the entry point wrote (``plan=``), works in its Hydra
output folder (``<runs>/<dataset>/<name>``: the training run's checkpoint, CSV log, outlier ROC
curve and NDB sample grid stay there) and writes ``<records>/<dataset>/<name>.json`` atomically. A failing run writes
a record with its error instead of stopping the other jobs; the next launch trains it again.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from dcgmm.app.callbacks import TrainingSpeed
from dcgmm.app.checkpoints import load_module
from dcgmm.app.config import compose
from dcgmm.app.evaluation import evaluate
from dcgmm.app.locations import CONF_DIR
from dcgmm.app.ndb import sample_quality, training_bins
from dcgmm.app.tasks import train
from dcgmm.app.utils import instantiate
from dcgmm.core.images import make_grid, save_png
from dcgmm.core.sampling import SamplingOptions
from dcgmm.errors import ConfigError
from dcgmm.results.baselines import em_baseline
from dcgmm.results.peers import CircuitSettings, circuit_baseline
from dcgmm.results.plan import Planner, RunSpec, run_key
from dcgmm.results.records import RECORD_VERSION, code_version, machine_info, now, read_record, write_json

__all__ = ["record_path", "run_job"]

log = logging.getLogger(__name__)


def record_path(records_dir: Path, spec: RunSpec) -> Path:
    return Path(records_dir) / spec.dataset / f"{spec.name}.json"


def _float(value) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def save_grid(images, path: Path) -> None:
    save_png(make_grid(images[:64], nrow=8), path)


def ndb_binning(ndb_cfg: dict, datamodule, data_dir: Path):
    """The NDB bins of the dataset's training split (cached in data/cache) and, for reference, the
    NDB of as many real test images as samples."""
    import torch

    n = ndb_cfg.get("train_images")
    binning = training_bins(datamodule, int(ndb_cfg.get("bins", 100)), int(ndb_cfg.get("kmeans_samples", 20000)), None if n is None else int(n),
                            data_dir / "cache")
    test_x = datamodule.dataset("test").x
    pick = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(0))[: int(ndb_cfg.get("samples", 1000))]
    return binning, dict(binning.evaluate(test_x[pick]).as_dict(), images=len(pick))


def run_sgd(spec: RunSpec, out: Path, runs_dir: Path, ndb_cfg: dict) -> dict:
    """Train and test one configuration with dcgmm.app.tasks.train; NDB of samples for main runs."""
    cfg = compose("train", spec.overrides, output_dir=out, log_dir=runs_dir)
    start = time.perf_counter()
    with open(out / "train.log", "a") as console, contextlib.redirect_stdout(console):  # Lightning's tables to the run's log
        metrics, objects = train(cfg)
    module, datamodule, trainer = objects["model"], objects["datamodule"], objects["trainer"]
    speed = next(cb for cb in objects["callbacks"] if isinstance(cb, TrainingSpeed))
    checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    record: dict[str, Any] = dict(
        metrics={k: _float(v) for k, v in sorted(metrics.items()) if k.startswith(("test/", "val/"))},
        speed=speed.as_dict(),
        K=int(module.stack.top_gmm.K),
        params=int(sum(p.numel() for p in module.parameters())),
        # where each GMM layer's annealing ended (sigma0 = 0.25 sqrt(2K), floor 0.01)
        sigma={module.stack.layers[i].name: float(schedule.sigma) for i, schedule in module.schedules.items()},
        top_sigma=float(module.schedules[module.stack.top_gmm.index].sigma),
        epochs=int(trainer.current_epoch),
        max_epochs=cfg.trainer.max_epochs,
        limit_train_batches=cfg.trainer.get("limit_train_batches"),
        split_sizes=datamodule.split_sizes(),
        classes=None if datamodule.classes is None else list(datamodule.classes),
    )
    if spec.kind == "main":
        module.eval()
        binning, reference = ndb_binning(ndb_cfg, datamodule, Path(cfg.paths.data_dir))
        sharpening = ndb_cfg.get("sharpening")
        quality = sample_quality(module.stack, binning, samples=int(ndb_cfg.get("samples", 1000)), options=learned_options(ndb_cfg), sharpening=sharpening, seed=0)
        plain = quality["plain"]
        save_grid(plain.samples, out / "samples.png")
        record["ndb"] = dict(plain.result.as_dict(), samples=len(plain.samples), top_s=plain.options.top_s, divisor=plain.options.divisor,
                             seconds=plain.seconds, reference=reference)
        if "sharpened" in quality:  # the same draws (same seed), then sharpened below overlapping foldings
            sharp = quality["sharpened"]
            save_grid(sharp.samples, out / "samples_sharpened.png")
            record["ndb_sharpened"] = dict(sharp.result.as_dict(), samples=len(sharp.samples), **sharpening, seconds=sharp.seconds)
    record["seconds"] = time.perf_counter() - start
    if checkpoint:  # the model the test scored, kept for evaluation-only passes
        record["checkpoint"] = kept_path(Path(checkpoint), runs_dir)
    return record


def kept_path(path: Path, runs_dir: Path) -> str:
    """A kept model's path as a record names it: relative to the runs folder where it lies there."""
    kept = Path(path).resolve()
    return str(kept.relative_to(Path(runs_dir).resolve()) if kept.is_relative_to(Path(runs_dir).resolve()) else kept)


def sample_em(gmm, n: int, options: dict, seed: int = 0):
    """Samples of a fitted diagonal GaussianMixture (or anything with its ``weights_``, ``means_``
    and ``covariances_``) with the options of the DCGMM samples (:class:`SamplingOptions`): the
    mixture is where the draw starts, so, like a DCGMM's top layer, it draws its component from
    the whole prior (``top_s`` does not apply): in proportion to the weights (``top: weights``),
    uniformly (``top: uniform``) or ``i mod K`` for sample ``i`` (``top: cycle``); its standard
    deviations divided by ``divisor``; pixels clipped to [0, 1]."""
    import numpy as np
    import torch

    parsed = SamplingOptions.parse({k: v for k, v in options.items() if k in ("top", "divisor")})
    if isinstance(parsed.divisor, dict):
        raise ConfigError(f"divisor={parsed.divisor}: an EM mixture is one flat layer; give one divisor")
    rng = np.random.default_rng(seed)
    weights = np.ones(len(gmm.weights_)) if parsed.top == "uniform" else np.asarray(gmm.weights_, dtype=np.float64)
    if parsed.top == "cycle":
        component = np.arange(n) % len(weights)
    else:
        component = rng.choice(len(weights), size=n, p=weights / weights.sum())
    std = np.sqrt(gmm.covariances_[component]) / parsed.divisor
    x = np.clip(gmm.means_[component] + std * rng.standard_normal(std.shape), 0.0, 1.0)
    side = int(round(math.sqrt(x.shape[1])))
    return torch.from_numpy(x.astype(np.float32)).view(n, 1, side, side)


def table_bins(all_classes, ndb_cfg: dict):
    """The NDB bins of the table (:func:`ndb_binning`) for a config of the runs on all classes."""
    datamodule = instantiate(all_classes.data)
    datamodule.setup("fit")
    return ndb_binning(ndb_cfg, datamodule, Path(all_classes.paths.data_dir))[0]


def run_baseline(spec: RunSpec, out: Path, planner: Planner, runs_dir: Path) -> dict:
    """The EM baseline (:func:`dcgmm.results.baselines.em_baseline`) or a peer
    (:func:`dcgmm.results.peers.circuit_baseline`) as a run record, with NDB of samples on all classes."""
    preset, ndb_cfg = planner.preset, planner.preset["ndb"]
    all_classes = compose("train", planner.sgd_overrides("table_flat", spec.dataset, "main", []), output_dir=out)  # as the runs on all classes
    data_dir = Path(all_classes.paths.data_dir)
    samples = int(ndb_cfg.get("samples", 1000)) if spec.kind == "main" else 0
    start = time.perf_counter()
    if spec.method == "em":
        em = preset["em"]
        result = em_baseline(spec.dataset, K=spec.K, data_dir=data_dir, held_out=spec.held_out, n_train=em.get("n_train"),
                             max_iter=int(em.get("max_iter", 100)), seed=0)
        seconds = time.perf_counter() - start
        gmm = result["model"]
        record: dict[str, Any] = dict(
            K=int(result["K"]), params=int(gmm.means_.size + gmm.covariances_.size + gmm.weights_.size),
            cluster=result["cluster"], loglik=result["loglik"], bpd=result["bpd"], auroc=result.get("auroc"),
            train_images=result["train_images"], test_images=result["test_images"], outliers=result.get("outliers"),
            n_iter=int(gmm.n_iter_), converged=bool(gmm.converged_), max_iter=int(em.get("max_iter", 100)),
            seconds=seconds, images_per_second=gmm.n_iter_ * result["train_images"] / seconds,
        )
        drawn = sample_em(gmm, samples, learned_options(ndb_cfg)) if samples else None
        if spec.kind == "main":  # the fitted mixture, kept for samples passes (mode=samples)
            import numpy as np

            np.savez(out / "em.npz", weights=gmm.weights_, means=gmm.means_, covariances=gmm.covariances_)
            record["checkpoint"] = kept_path(out / "em.npz", runs_dir)
    else:
        result = circuit_baseline(spec.dataset, data_dir, spec.held_out, CircuitSettings(**preset[spec.method]), samples=samples)
        record = {k: result[k] for k in ("params", "loglik", "bpd", "acc", "train_images", "test_images", "epochs", "seconds", "images_per_second", "settings")}
        record.update(auroc=result.get("auroc"), outliers=result.get("outliers"))
        drawn = result.get("samples") if samples else None
    if drawn is not None:
        binning = table_bins(all_classes, ndb_cfg)
        save_grid(drawn, out / "samples.png")
        record["ndb"] = dict(binning.evaluate(drawn).as_dict(), samples=samples)
        if spec.method == "em":
            record["ndb"]["divisor"] = float(ndb_cfg.get("divisor", 1.0))
    return record


def kept_checkpoint(record: dict, runs_dir: Path) -> Path | None:
    """The checkpoint a record says its run kept, if it is still there."""
    kept = record.get("checkpoint")
    path = None if not kept else Path(kept) if Path(kept).is_absolute() else Path(runs_dir) / kept
    return path if path is not None and path.is_file() else None


def evaluate_kept(path: Path, runs_dir: Path, spec: RunSpec, out: Path, label: str, overrides: list[str], preset: dict) -> None:
    """Test the run's kept checkpoint with ``evaluate.yaml``: the preset's overrides of the run's
    kind (its test settings), the run's held-out class, then ``overrides``; its ``test/*`` metrics
    go to ``record["evaluations"][label]``, beside the record's own numbers."""
    checkpoint = kept_checkpoint(read_record(path), runs_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{path}: its run's checkpoint is gone; train the run again to keep one")
    held = ["+outlier=default", f"outlier.held_out={spec.held_out}"] if spec.held_out is not None else []
    seed = [] if spec.seed is None else [f"seed={spec.seed}"]
    words = [f"ckpt_path='{checkpoint}'", f"data={spec.dataset}", *seed, *held, "task_name=results", *preset["overrides"]["all"],
             *preset["overrides"][spec.kind], *overrides]
    with open(out / "evaluate.log", "a") as console, contextlib.redirect_stdout(console):
        metrics, _ = evaluate(compose("evaluate", words, output_dir=out))
    record = read_record(path)  # as it is now (another pass may have added its figures meanwhile)
    record.setdefault("evaluations", {})[label] = dict(overrides=overrides, metrics=metrics, finished=now(), machine=machine_info(1)["cpu"])
    write_json(path, record)


def learned_options(ndb_cfg: dict) -> dict:
    """The table's own NDB sampler (the preset's ``ndb`` block): its ``top_s`` and ``divisor``."""
    return {key: ndb_cfg[key] for key in ("top_s", "divisor") if ndb_cfg.get(key) is not None}


def samplers(preset: dict, spec: RunSpec) -> dict[str, dict]:
    """The samplers whose samples of a kept main model are measured (``mode=samples``):
    ``{name: {options, file}}``. ``learned`` is the table's own NDB sampler, unsharpened; each
    entry of the preset's ``samplers`` (resolved by :func:`dcgmm.results.plan.sampler_settings`)
    that names the run's row (its experiment, ``table_`` left off) and dataset adds its file's."""
    out = {"learned": dict(options=learned_options(preset["ndb"]), file=None)}
    row = "flat" if spec.method == "em" else (spec.experiment or "").removeprefix("table_")  # EM fits a flat GMM
    for name, per_row in (preset.get("samplers") or {}).items():
        if spec.dataset in per_row.get(row, {}):
            out[name] = per_row[row][spec.dataset]
    return out


def sampled_as_planned(record: dict, preset: dict, spec: RunSpec) -> bool:
    """Whether ``record`` holds figures of every sampler :func:`samplers` gives its run now, with the
    same files and options, and no error."""
    figures = record.get("samplers") or {}
    wanted = json.loads(json.dumps(samplers(preset, spec)))  # as stored: JSON turns int keys into strings
    return not figures.get("error") and all({k: (figures.get(name) or {}).get(k) for k in ("file", "options")} == want for name, want in wanted.items())


def sample_kept(path: Path, spec: RunSpec, out: Path, planner: Planner, runs_dir: Path, samples_dir: Path, stamp: str) -> None:
    """NDB/B and JS of the run's kept model under each of :func:`samplers` (1,000 samples, seed 0,
    the table's bins) into ``record["samplers"]``, each stamped with the launch's ``stamp`` (its
    plan file), and a grid of the first 64 samples of each as ``<samples_dir>/<dataset>/<run>_<sampler>.png``.
    ``learned`` repeats the record's own NDB draw; ``matches_record`` says whether it gave the
    record's numbers exactly (a diagnostic: another CPU may round differently)."""
    import torch

    record = read_record(path)
    checkpoint = kept_checkpoint(record, runs_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{path}: its run's checkpoint is gone; train the run again to keep one")
    ndb_cfg = planner.preset["ndb"]
    n = int(ndb_cfg.get("samples", 1000))
    binning = table_bins(compose("train", planner.sgd_overrides("table_flat", spec.dataset, "main", []), output_dir=out), ndb_cfg)
    if spec.method == "em":  # the fitted mixture's weights, means and variances (run_baseline)
        from types import SimpleNamespace

        import numpy as np

        with np.load(checkpoint) as kept:
            mixture = SimpleNamespace(weights_=kept["weights"], means_=kept["means"], covariances_=kept["covariances"])
    else:
        module = load_module(checkpoint).eval()
    figures = {}
    for name, sampler in samplers(planner.preset, spec).items():
        start = time.perf_counter()
        if spec.method == "em":
            drawn = sample_em(mixture, n, sampler["options"], seed=0)
            result = binning.evaluate(drawn)
        else:
            with torch.inference_mode(False):  # sharpening takes gradients with respect to the images
                quality = sample_quality(module.stack, binning, samples=n, options=sampler["options"], seed=0)["plain"]
            drawn, result = quality.samples, quality.result
        grid = Path(samples_dir) / spec.dataset / f"{spec.name}_{name}.png"
        save_grid(drawn, grid)
        figures[name] = dict(result.as_dict(), samples=len(drawn), file=sampler["file"], options=sampler["options"],
                             seconds=time.perf_counter() - start, grid=grid.name, finished=now(), machine=machine_info(1)["cpu"], stamp=stamp)
        if name == "learned" and record.get("ndb"):
            figures[name]["matches_record"] = all(record["ndb"].get(k) == figures[name][k] for k in ("ndb", "js"))
    record = read_record(path)  # as it is now (another pass may have added its figures meanwhile)
    record["samplers"] = figures
    write_json(path, record)


def _error(err: BaseException) -> str:
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {message}"


def run_job(cfg: DictConfig) -> str:
    """The task of one job: ``cfg.run`` of the plan ``cfg.plan``, trained (``mode=train``) or
    evaluated (``mode=evaluate``). Returns ``"done"`` or ``"failed: <error>"``; never raises.

    Under SLURM with several tasks per job (DDP), every task trains; only global rank 0 clears
    the run folder and writes the record."""
    import torch
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from threadpoolctl import threadpool_limits

    try:
        plan = json.loads(Path(cfg.plan).read_text())
        planner = Planner.from_dict(plan["settings"], plan)
        spec = planner.runs[cfg.run]
    except (OSError, ValueError, KeyError) as err:  # no run to write a record for: the launch lists it as not finished
        log.error(f"{cfg.run}: not in the plan {cfg.plan} ({_error(err)})")
        return f"failed: {_error(err)}"
    out, runs_dir = Path(HydraConfig.get().runtime.output_dir), Path(plan["runs_dir"])
    path = record_path(Path(plan["records_dir"]), spec)
    rank = int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0")))
    # compose() below replaces Hydra's global state; an in-process launcher needs it for the next job
    hydra_state, job_config, threads = GlobalHydra.instance().hydra, HydraConfig.instance().cfg, torch.get_num_threads()
    torch.set_num_threads(int(cfg.threads))
    try:
        with threadpool_limits(limits=int(cfg.threads)):
            if cfg.mode == "evaluate":
                evaluate_kept(path, runs_dir, spec, out, str(cfg.label), list(plan["overrides"]), planner.preset)
                return "done"
            if cfg.mode == "samples":
                sample_kept(path, spec, out, planner, runs_dir, Path(plan["samples_dir"]), Path(cfg.plan).name)
                return "done"
            for child in out.iterdir() if rank == 0 else ():  # what an earlier attempt left (Hydra's .hydra/ and logs stay)
                if child.name != ".hydra" and child.suffix != ".log":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            record = run_sgd(spec, out, runs_dir, planner.preset["ndb"]) if spec.method == "sgd" else run_baseline(spec, out, planner, runs_dir)
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the others
        record = dict(error=_error(err))
        log.exception(f"{spec.key} failed")
        if cfg.mode == "evaluate":  # the error goes where the figures would have gone
            failed = read_record(path)
            failed.setdefault("evaluations", {})[str(cfg.label)] = dict(record, overrides=list(plan["overrides"]), finished=now())
            write_json(path, failed)
            return f"failed: {record['error']}"
        if cfg.mode == "samples":  # the record keeps its numbers; the error goes beside the figures of an earlier pass
            failed = read_record(path)
            failed["samplers"] = {**failed.get("samplers", {}), "error": record["error"]}
            write_json(path, failed)
            return f"failed: {record['error']}"
    finally:
        GlobalHydra.instance().hydra, HydraConfig.instance().cfg = hydra_state, job_config
        torch.set_num_threads(threads)
        gc.collect()
    if rank == 0:
        record.update(record_version=RECORD_VERSION, preset=plan["preset"], key=run_key(spec, planner.preset), dataset=spec.dataset, name=spec.name,
                      seed=spec.seed, overrides=spec.overrides, code=plan.get("code") or code_version(), finished=now(), machine=machine_info(int(cfg.threads))["cpu"])
        write_json(path, record)
    return f"failed: {record['error']}" if record.get("error") else "done"


_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="results_job.yaml")(run_job)


if __name__ == "__main__":
    _main()

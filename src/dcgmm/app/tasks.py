"""Hydra tasks: build data, model, callbacks, loggers and trainer from a config and run them."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from dcgmm.app import pretrained
from dcgmm.app.checkpoints import check_checkpoint_fits, load_module
from dcgmm.app.engine_checks import check_cuda_graph, check_steps_per_call
from dcgmm.app.utils import apply_extras, build_trainer, instantiate, instantiate_group, task_wrapper
from dcgmm.core.images import make_grid, save_png
from dcgmm.core.sampling import Sampler, SamplingOptions, missing_pixels
from dcgmm.errors import ConfigError
from dcgmm.training.runtime import flush_denormals

log = logging.getLogger("dcgmm")


def resolve_ckpt_path(ckpt_path: str | None, cfg: DictConfig) -> str | None:
    """``ckpt_path=last``: the newest ``last.ckpt`` of earlier runs of this task; else the path as given."""
    if ckpt_path != "last":
        if ckpt_path and not Path(ckpt_path).is_file():
            raise ConfigError(f"ckpt_path={ckpt_path} does not exist; give a .ckpt file or ckpt_path=last")
        return ckpt_path
    log_dir = Path(cfg.paths.log_dir)
    here = Path(cfg.paths.output_dir).resolve()
    task_dir = log_dir / str(cfg.get("task_name", ""))
    root = task_dir if task_dir.is_dir() else log_dir
    found = [p for p in root.rglob("last.ckpt") if here not in p.resolve().parents]
    if not found:
        raise ConfigError(f"ckpt_path=last: no last.ckpt of an earlier run under {root}; train first or give a checkpoint path")
    newest = max(found, key=lambda p: p.stat().st_mtime)
    log.info(f"Resuming from the newest checkpoint: {newest}")
    return str(newest)


def check_wandb_resume(cfg: DictConfig) -> None:
    """``logger.wandb.id=<id>`` in offline mode resumes a run that exists under ``paths.log_dir``."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    run_id = wandb_cfg.get("id") if wandb_cfg else None
    if not run_id or not wandb_cfg.get("offline", False):
        return
    log_dir = Path(cfg.paths.log_dir)
    if not any(log_dir.rglob(f"offline-run-*-{run_id}")):
        raise ConfigError(
            f"logger.wandb.id={run_id}: no offline W&B run with this id under {log_dir}; "
            f"drop the id to start a new run, or use the id of a folder wandb/offline-run-<date>-<id>"
        )
    log.info(f"Resuming W&B run {run_id} (offline)")


# trainer precisions that keep GMM parameters in float32 or float64 (log-scores and objectives are
# always computed in the parameters' precision, docs/design.md section 2)
PRECISIONS = ("32-true", "32", "64-true", "64", "16-mixed", "bf16-mixed")


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """One-line errors, before anything is built, for a GPU trainer on a machine without one, more
    devices than the machine has, and a precision that would store the GMMs in 16 bits."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA GPU is available here; use trainer=cpu (or trainer=ddp_sim for data-parallel on CPU)")
    devices = trainer_cfg.get("devices")
    if accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise ConfigError(
            f"trainer.devices={devices} but {torch.cuda.device_count()} CUDA GPU(s) are visible here; "
            f"use trainer.devices={torch.cuda.device_count()} or -1 (all visible)"
        )
    precision = trainer_cfg.get("precision")
    if precision is not None and str(precision) not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision} is not supported: GMM parameters need float32 or float64; "
            f"use one of {', '.join(PRECISIONS)} (the mixed ones compute log-likelihoods in float32)"
        )


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (``cfg.train``) and test (``cfg.test``) the configured model on the configured data.

    Everything that can be checked without data (model topology, data settings) is built and
    validated before the loggers and the trainer, so bad input fails before any file is written.

    Returns:
        the metrics logged by fit and test, and the objects built (for tests and notebooks).
    """
    flush_denormals()  # a launcher's worker process does not pass through the entry point's prepare_environment
    apply_extras(cfg)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg)
    check_accelerator(cfg.trainer)
    check_cuda_graph(cfg.model, cfg.trainer)
    check_steps_per_call(cfg.model, cfg.trainer)
    check_wandb_resume(cfg)
    callbacks = instantiate_group(cfg.get("callbacks"), "callback")  # first: they check settings other nodes derive from
    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    log.info(f"Instantiating model <{cfg.model._target_}>")
    model: L.LightningModule = instantiate(cfg.model)
    log.info("DCGMM stack:\n" + model.stack.summary_table())
    if ckpt_path:
        check_checkpoint_fits(ckpt_path, model)  # another topology: one line, before any file is written

    trainer, loggers = build_trainer(cfg, model, callbacks)
    objects = dict(cfg=cfg, datamodule=datamodule, model=model, callbacks=callbacks, logger=loggers, trainer=trainer)

    if cfg.get("train"):
        log.info("Starting training")
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)  # our own checkpoints hold the optimizer partial
    train_metrics = dict(trainer.callback_metrics)

    if cfg.get("test"):
        log.info("Starting testing")
        ckpt_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not ckpt_path:
            log.info("No best checkpoint; testing the current weights")
            ckpt_path = None
        trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    metrics = {**train_metrics, **trainer.callback_metrics}
    return metrics, objects


def sampling_options(cfg: DictConfig) -> SamplingOptions:
    """:class:`SamplingOptions` from the top-down keys of a sample config (``conf/sample.yaml``)."""
    keys = [key for key in ("top", "top_s", "divisor", "pooling_mode", "sharpening") if key in cfg]
    return SamplingOptions.parse({key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key] for key in keys})


def sampling_device(name) -> torch.device:
    """``device=cpu|cuda|cuda:<i>|auto`` of sample.py; a one-line error for a GPU that is not there."""
    text = str(name or "cpu").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is unknown; use cpu, cuda, cuda:<index> or auto") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device={name} but {torch.cuda.device_count()} CUDA GPU(s) are visible here; use device=cpu or device=auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is not supported; use cpu, cuda, cuda:<index> or auto")
    return device


@task_wrapper
def sample(cfg: DictConfig) -> dict[str, Any]:
    """Draw samples from a checkpoint and write (and log) a PNG grid. Returns paths and tensors."""
    mode = cfg.get("mode", "unconditional")
    modes = ("unconditional", "conditional", "variants", "inpaint")
    if mode not in modes:
        raise ConfigError(f"mode={mode!r} is unknown; use one of {', '.join(modes)}")
    n = cfg.get("n")
    if n is None or int(n) < 1:
        raise ConfigError(f"n={n} must be a positive number of samples")
    n = int(n)
    scale = cfg.get("scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"scale={scale} must be a positive integer (pixels of the grid per image pixel)")
    device = sampling_device(cfg.get("device", "cpu"))
    if cfg.get("pretrained") and cfg.get("ckpt_path"):
        raise ConfigError("give ckpt_path=... or pretrained=..., not both")
    module = load_module(pretrained.resolve(str(cfg.pretrained)) if cfg.get("pretrained") else cfg.get("ckpt_path"))
    stack = module.stack.to(device)
    generator = torch.Generator(device=device).manual_seed(int(cfg.get("seed") or 0))  # draws happen on the device
    torch.manual_seed(int(cfg.get("seed") or 0))
    sampler = Sampler(stack, sampling_options(cfg), generator)
    output_dir = Path(cfg.paths.output_dir)
    loggers = instantiate_group(cfg.get("logger"), "logger")
    for logger in loggers:  # first: a logger that cannot start (W&B online without credentials) stops the run before sampling
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    start = time.perf_counter()
    rows: list[torch.Tensor]
    if mode == "unconditional":
        images = sampler.sample(n)
        rows = [images]
    elif mode == "conditional":
        classifier = stack.classifier
        if classifier is None:
            raise ConfigError("mode=conditional needs a model with a classifier layer; use mode=unconditional")
        wanted = list(cfg.classes) if cfg.get("classes") else list(range(classifier.num_classes))
        classes = torch.tensor([wanted[i % len(wanted)] for i in range(n)])
        images = sampler.conditional(classes)
        rows = [images]
    else:
        datamodule = instantiate(cfg.data)
        datamodule.setup("test")
        if tuple(datamodule.image_shape) != tuple(stack.input_shape):
            raise ConfigError(f"the checkpoint models {list(stack.input_shape)} images but data={cfg.data.name} has {list(datamodule.image_shape)}")
        real = datamodule.dataset("test").x[:n]
        if mode == "variants":
            images = sampler.variants(real, cfg.get("layer"))
            rows = [real, images]
        else:
            missing = missing_pixels(cfg.mask, tuple(stack.input_shape), box=cfg.get("box"))
            masked = torch.where(missing, torch.zeros_like(real), real)
            images = sampler.inpaint(real, missing, cfg.get("layer"))
            rows = [real, masked, images]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rows = [row.cpu() for row in rows]
    images = images.cpu()

    nrow = cfg.get("nrow") or (len(rows[0]) if len(rows) > 1 else None)
    grid = make_grid(torch.cat(rows), nrow=nrow if len(rows) > 1 else cfg.get("nrow"))
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)  # each pixel a scale x scale block
    path = save_png(grid, output_dir / f"{mode}.png")
    torch.save(images, output_dir / f"{mode}.pt")
    log.info(f"{len(images)} {mode} samples in {seconds:.2f} s ({len(images) / seconds:.1f} samples/s) -> {path}")

    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=f"samples/{mode}", images=[grid], caption=[f"{mode}, n={n}"])
        logger.finalize("success")
    return {"path": path, "images": images, "seconds": seconds}

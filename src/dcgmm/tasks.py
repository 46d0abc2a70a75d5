"""Hydra tasks: build data, model, callbacks, loggers and trainer from a config and run them."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from dcgmm.utils import instantiate, instantiate_group, task_wrapper

log = logging.getLogger("dcgmm")


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (``cfg.train``) and test (``cfg.test``) the configured model on the configured data.

    Everything that can be checked without data (model topology, data settings) is built and
    validated before the loggers and the trainer, so bad input fails before any file is written.

    Returns:
        the metrics logged by fit and test, and the objects built (for tests and notebooks).
    """
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    log.info(f"Instantiating model <{cfg.model._target_}>")
    model: L.LightningModule = instantiate(cfg.model)
    log.info("DCGMM stack:\n" + model.stack.summary_table())

    callbacks = instantiate_group(cfg.get("callbacks"), "callback")
    loggers = instantiate_group(cfg.get("logger"), "logger")
    log.info(f"Instantiating trainer <{cfg.trainer._target_}>")
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    objects = dict(cfg=cfg, datamodule=datamodule, model=model, callbacks=callbacks, logger=loggers, trainer=trainer)

    if loggers:
        hparams = OmegaConf.to_container(cfg, resolve=True)
        hparams["model/params/total"] = sum(p.numel() for p in model.parameters())
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)

    if cfg.get("train"):
        log.info("Starting training")
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
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

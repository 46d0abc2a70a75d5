"""The settings each training engine cannot honour, checked once (one-line errors, exit status 2).

From the config, before anything is built (the Hydra tasks): :func:`check_cuda_graph` and
:func:`check_steps_per_call`. From the trainer, at the start of fit (the LightningModule, whatever
built it, the tasks or the estimator): :func:`check_loop_settings`, :func:`check_call_ends` and,
once a checkpoint is restored, :func:`check_resume_point`.
"""

from __future__ import annotations

import math
import warnings

import torch
from omegaconf import DictConfig

from dcgmm.errors import ConfigError
from dcgmm.training.graphstep import plain_sgd_problem

STEPS_NEED_ONE_PROCESS = (
    "model.steps_per_call={steps} runs several SGD steps per call in one process; use model.steps_per_call=1 "
    "for data-parallel training (trainer=ddp, trainer.devices>1)"
)
GRAPH_AND_COMPILE = "model.cuda_graph=true records the whole step already; drop model.compile (or set model.cuda_graph=false)"


def _one_process(trainer_cfg: DictConfig) -> bool:
    """True when the trainer config trains in one process (no strategy, one device, one node)."""
    devices, nodes = trainer_cfg.get("devices"), trainer_cfg.get("num_nodes") or 1
    return trainer_cfg.get("strategy") is None and nodes == 1 and (devices is None or (isinstance(devices, int) and devices == 1))


def check_steps_per_call(model_cfg: DictConfig, trainer_cfg: DictConfig) -> None:
    """``model.steps_per_call > 1``: a one-line error, before anything is built, for data-parallel
    training (DDP synchronises gradients once per forward of its wrapper, i.e. once per call)."""
    steps = model_cfg.get("steps_per_call", 1)
    if isinstance(steps, int) and not isinstance(steps, bool) and steps > 1 and not _one_process(trainer_cfg):
        raise ConfigError(STEPS_NEED_ONE_PROCESS.format(steps=steps))


def check_cuda_graph(model_cfg: DictConfig, trainer_cfg: DictConfig) -> None:
    """``model.cuda_graph=true`` (dcgmm.training.graphstep): one-line errors, before anything is built, for
    data-parallel training, mixed precision and a machine or trainer without a CUDA GPU."""
    if model_cfg.get("cuda_graph") is not True:  # false, or a value the model's type check refuses
        return
    if model_cfg.get("compile"):
        raise ConfigError(GRAPH_AND_COMPILE)
    optimizer = model_cfg.get("optimizer") or {}
    target = str(optimizer.get("_target_", "torch.optim.SGD"))
    problem = plain_sgd_problem("SGD" if target == "torch.optim.SGD" else target.rsplit(".", 1)[-1], dict(optimizer))
    if problem:
        raise ConfigError(problem)
    if not _one_process(trainer_cfg):
        raise ConfigError(
            "model.cuda_graph=true trains in one process on one GPU; use trainer=gpu (trainer.devices=1), "
            "or model.cuda_graph=false for data-parallel training"
        )
    precision = str(trainer_cfg.get("precision") or "32-true")
    if precision.endswith("-mixed"):
        raise ConfigError(f"model.cuda_graph=true records float32 or float64 steps; use trainer.precision=32-true or 64-true (not {precision})")
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator not in ("gpu", "cuda") or not torch.cuda.is_available():
        where = "no CUDA GPU is available here" if not torch.cuda.is_available() else f"trainer.accelerator={accelerator}"
        raise ConfigError(f"model.cuda_graph=true records CUDA graphs but {where}; use trainer=gpu on a GPU machine, or model.cuda_graph=false")


def check_loop_settings(trainer, steps: int, manual: bool) -> None:
    """At the start of fit, before the training loader exists: one-line errors for settings that
    Lightning's manual optimisation (``manual``: ``model.cuda_graph=true`` or ``steps > 1``) does not
    honour, or that would count calls of Lightning's loop where they should count SGD steps
    (``steps`` = ``model.steps_per_call`` > 1); those that need the loader's length are
    :func:`check_call_ends`'s."""
    if not manual:
        return
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "_train_time_interval", None) is not None:
            raise ConfigError(
                "callbacks.model_checkpoint.train_time_interval does not save under model.cuda_graph=true or "
                "model.steps_per_call>1 (Lightning's manual optimisation); use every_n_train_steps or every_n_epochs"
            )
    if steps == 1:
        return
    if trainer.world_size > 1:
        raise ConfigError(STEPS_NEED_ONE_PROCESS.format(steps=steps))
    interval = getattr(trainer, "val_check_interval", None)
    if getattr(trainer, "_val_check_time_interval", None) is not None or isinstance(interval, int) or interval != 1.0:
        raise ConfigError(
            f"trainer.val_check_interval would count calls of model.steps_per_call={steps} steps; with "
            f"steps_per_call>1 validate at epoch ends (check_val_every_n_epoch) or use model.steps_per_call=1"
        )


def check_resume_point(trainer, steps: int) -> None:
    """With ``steps`` = ``model.steps_per_call`` > 1, once a checkpoint's loop state is restored
    (``on_train_start``): Lightning counts a resumed epoch's progress in calls of its loop, not in
    SGD batches, so a checkpoint that ends inside an epoch cannot resume."""
    batches = trainer.num_training_batches
    if steps > 1 and math.isfinite(batches) and batches >= 1 and trainer.global_step % int(batches):
        raise ConfigError(
            f"the checkpoint ends inside an epoch (step {trainer.global_step} of epochs of {int(batches)}), which "
            f"model.steps_per_call={steps} cannot resume; resume from a checkpoint at an epoch end or with model.steps_per_call=1"
        )


def check_call_ends(trainer, steps: int) -> None:
    """With ``steps`` = ``model.steps_per_call`` > 1, once the loader's length is known: step
    checkpoints and logging need the ends of calls on their multiples in every epoch (``steps``
    dividing an epoch's batches, or an interval that is a multiple of the epoch)."""
    if steps == 1 or not math.isfinite(trainer.num_training_batches) or trainer.num_training_batches < 1:
        return
    per_epoch = int(trainer.num_training_batches)

    def aligned(every: int) -> bool:  # call ends fall on every multiple of ``every`` in every epoch
        return every % per_epoch == 0 or (every % steps == 0 and per_epoch % steps == 0)

    for callback in trainer.checkpoint_callbacks:
        every = int(getattr(callback, "_every_n_train_steps", 0) or 0)
        if every and not aligned(every):
            raise ConfigError(
                f"callbacks.model_checkpoint.every_n_train_steps={every} does not fall on the ends of calls of "
                f"model.steps_per_call={steps} in epochs of {per_epoch} steps; use a multiple of {steps} with a steps_per_call "
                f"that divides {per_epoch}, or a multiple of {per_epoch}"
            )
    if trainer.log_every_n_steps and not aligned(trainer.log_every_n_steps):
        warnings.warn(
            f"trainer.log_every_n_steps={trainer.log_every_n_steps} does not fall on the ends of calls of "
            f"model.steps_per_call={steps} in epochs of {per_epoch} steps: training metrics are logged only after the "
            f"calls that end on a multiple of it",
            stacklevel=2,
        )


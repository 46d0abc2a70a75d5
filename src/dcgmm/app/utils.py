"""Helpers of the Hydra task tier: instantiating callbacks/loggers, the task wrapper, printing."""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from dcgmm.app.locations import conf_dir, project_root
from dcgmm.app.resolvers import register_resolvers
from dcgmm.core.typecheck import check_arguments
from dcgmm.data import DataError
from dcgmm.errors import ConfigError, TrainingDiverged
from dcgmm.training.runtime import flush_denormals

log = logging.getLogger("dcgmm")

# conf/hydra/launcher/joblib.yaml has the name of the joblib plugin's own config on purpose (so that
# hydra/launcher=joblib picks it) and sets every key of it; Hydra warns that it matches the two by name.
# Set on import, so that it also holds in the launcher's worker processes (they import this module).
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/joblib' is validated against ConfigStore schema")


def instantiate(conf, *args, **kwargs):
    """``hydra.utils.instantiate`` that lets the project's own one-line errors through unwrapped.

    Hydra wraps every exception raised by a constructor in a multi-line InstantiationException;
    a ValueError raised on purpose for bad input (ConfigError, DataError) is re-raised as is.
    """
    check_node(conf)
    try:
        return hydra_instantiate(conf, *args, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ValueError):
            raise cause from None
        raise


def check_node(conf) -> None:
    """One-line ConfigError for a value of a ``_target_`` node that its constructor's annotation
    rules out (``model.K=abc``), before anything is built (:mod:`dcgmm.core.typecheck`)."""
    if not isinstance(conf, DictConfig) or "_target_" not in conf:
        return
    from hydra._internal.utils import _locate

    try:
        target = _locate(str(conf._target_))
    except Exception:  # noqa: BLE001 - Hydra reports an unknown target itself
        return
    key = conf._get_full_key(None)
    params = {name: conf[name] for name in conf if not str(name).startswith("_") and not OmegaConf.is_missing(conf, name)}
    params = {name: value for name, value in params.items() if not isinstance(value, (DictConfig, ListConfig))}
    check_arguments(target, params, f"{key}." if key else "")


def instantiate_group(group: DictConfig | None, what: str) -> list:
    """Instantiate every ``_target_`` entry of a config group (callbacks or loggers)."""
    objects = []
    if not group:
        return objects
    if not isinstance(group, DictConfig):
        raise TypeError(f"{what} config must be a mapping of name -> {{_target_: ...}}")
    for name, conf in group.items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info(f"Instantiating {what} <{conf._target_}> ({name})")
            objects.append(instantiate(conf))
    return objects


def exit_with_error(err: BaseException) -> None:
    """End a command-line program on bad input: ``error: <message>`` on stderr, exit status 2."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def check_group_overrides(argv: Sequence[str]) -> None:
    """One-line ConfigError for a command-line override that sets a config group to null
    (``logger=null``), which Hydra rejects with a traceback: name the group's ``none`` option, or
    ``~group`` to leave it out."""
    for arg in argv:
        match = re.fullmatch(r"\+{0,2}([A-Za-z_][\w/]*)=(null|None|NULL|~)", arg)
        if match is None or not (conf_dir() / match.group(1)).is_dir():
            continue
        group = match.group(1)
        fix = f"{group}=none" if (conf_dir() / group / "none.yaml").exists() else f"~{group} (to leave the group out)"
        options = sorted(path.stem for path in (conf_dir() / group).glob("*.yaml") if not path.stem.startswith("_"))
        raise ConfigError(f"{arg}: a config group takes one of its options ({', '.join(options)}), not null; use {fix}")


def prepare_environment(argv: Sequence[str] | None = None) -> None:
    """Settings every task needs before Hydra composes: project root, W&B that waits at most 30 s,
    the project's config resolvers (:mod:`dcgmm.app.resolvers`). With ``argv`` (an entry point's
    command line), a config group set to null stops the program with one line (exit status 2)."""

    if argv is not None:
        try:
            check_group_overrides(argv)
        except ConfigError as err:
            exit_with_error(err)

    flush_denormals()  # first: torch's worker threads, started later, inherit it (dcgmm.training.runtime)
    register_resolvers()
    os.environ.setdefault("PROJECT_ROOT", str(project_root()))
    # W&B's mode (offline by default) comes from the logger's config (dcgmm.app.loggers.WandbLogger)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")


def apply_extras(cfg: DictConfig) -> None:
    """Optional conveniences from ``cfg.extras``: silence warnings, print and save the config."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    if extras.get("print_config"):
        text = OmegaConf.to_yaml(cfg, resolve=False)
        log.info("Config:\n" + text)
        output_dir = cfg.get("paths", {}).get("output_dir")
        if output_dir:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "config_tree.yaml").write_text(text)


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # Hydra not initialised (called from Python)
        return False


def close_wandb() -> None:
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            log.info("Closing the W&B run")
            wandb.finish()


def task_wrapper(task: Callable) -> Callable:
    """Wrap a task so that it always prints the output folder and closes the W&B run.

    In a multirun, a failing job is logged and returns ``None`` so that the sweep goes on;
    in a single run the error propagates. Config errors (bad input) are reported as one line.
    """

    @functools.wraps(task)
    def wrapped(cfg: DictConfig):
        try:
            return task(cfg)
        except Exception as err:
            if _is_multirun():
                log.exception(f"job failed, the sweep continues: {type(err).__name__}: {err}")
                return None, None
            raise
        finally:
            output_dir = cfg.get("paths", {}).get("output_dir") if cfg else None
            if output_dir:
                log.info(f"Output dir: {output_dir}")
            close_wandb()

    return wrapped


def metric_value(metrics: dict, name: str | None) -> float | None:
    """Read ``name`` from the metric dict (for sweepers); a clear error if it was never logged.

    A NaN value is returned as ``None``, like a failed job: the Optuna sweeper records ``None`` as
    a failed trial and goes on, whereas NaN would stop the whole search (optuna 2.10 raises on it).
    """
    if not name:
        return None
    if name not in metrics:
        raise KeyError(
            f"optimized_metric={name!r} was not logged; logged metrics: {', '.join(sorted(metrics)) or 'none'}"
        )
    value = metrics[name]
    value = float(value.item() if hasattr(value, "item") else value)
    if math.isnan(value):
        log.warning(f"optimized_metric={name!r} is NaN; returning None (a failed trial for a sweeper)")
        return None
    return value


def optuna_search_space(config: DictConfig) -> list[str] | None:
    """Names of the parameters an Optuna sweep of ``config`` would search, as the sweeper sees them.

    ``hydra.sweeper.params`` plus the command-line overrides (which win); a parameter counts when it
    can take more than one value (``choice(a,b)``, ``a,b``, ``range(..)``, ``interval(..)``).
    ``None`` when the sweeper is not Optuna's.
    """
    sweeper = config.hydra.sweeper
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return None
    from hydra_plugins.hydra_optuna_sweeper._impl import (
        create_optuna_distribution_from_config,
        create_params_from_overrides,
    )

    # the deprecated hydra.sweeper.search_space still feeds the sweeper
    distributions = {
        str(k): create_optuna_distribution_from_config(v) for k, v in (sweeper.get("search_space") or {}).items()
    }
    params = sweeper.get("params") or {}
    overrides = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    searched, fixed = create_params_from_overrides(overrides)
    distributions.update(searched)
    return [name for name, dist in distributions.items() if name not in fixed and not dist.single()]


def check_optuna_search_space(config: DictConfig) -> None:
    """Raise a one-line :class:`ConfigError` when an Optuna sweep would search no parameter."""
    names = optuna_search_space(config)
    if names is not None and not names:
        raise ConfigError(
            "the Optuna search space is empty (no parameter in hydra.sweeper.params or on the command line takes "
            "more than one value), so every trial would train the same model; search one, e.g. "
            "'model.lr=interval(0.001,0.05)' or 'model.K=choice(25,49,100)'"
        )


class OptunaSearchSpaceCheck(Callback):
    """Hydra callback (``hydra.callbacks``) that stops an Optuna sweep with an empty search space
    before the sweeper starts: one line on stderr, exit status 2 (as train.py for bad input)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_optuna_search_space(config)
        except ConfigError as err:
            exit_with_error(err)


def check_output_dir(path: str | os.PathLike, key: str = "paths.log_dir") -> None:
    """One-line ConfigError when the folder ``path`` cannot be made: a file on its way, or a
    nearest existing folder this process may not write to."""
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}: cannot make the output folder {target}: {existing} is a file; choose another folder, e.g. {key}=logs")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: cannot make the output folder {target}: {existing} is not writable; choose a folder you can write to, e.g. {key}=logs")


class OutputDirCheck(Callback):
    """Hydra callback (``hydra.callbacks``) that checks, before Hydra makes the run or sweep
    folder, that it can be made: otherwise one line on stderr and exit status 2, nothing written."""

    def _check(self, config: DictConfig, node: str) -> None:
        try:
            folder = OmegaConf.select(config, f"hydra.{node}.dir")
        except Exception:  # noqa: BLE001 - an unresolvable folder is Hydra's to report
            return
        if folder is None:
            return
        try:
            check_output_dir(folder)
        except ConfigError as err:
            exit_with_error(err)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "sweep")


def run_entry_point(task: Callable, cfg: DictConfig):
    """Run a task from a command-line entry point (train.py, evaluate.py, sample.py).

    Bad input (ConfigError, DataError) and a diverged training (TrainingDiverged) end the program
    with one line ``error: ...`` on stderr and exit status 2, without a traceback.
    """

    try:
        return task(cfg)
    except (ConfigError, DataError, TrainingDiverged) as err:
        log.error(f"{type(err).__name__}: {err}")
        exit_with_error(err)


def build_trainer(cfg: DictConfig, model, callbacks: list, extra_hparams: dict | None = None):
    """Loggers from ``cfg.logger`` and the trainer from ``cfg.trainer``; logs the resolved config
    (plus ``extra_hparams`` and the parameter count) to every logger. Returns ``(trainer, loggers)``."""
    loggers = instantiate_group(cfg.get("logger"), "logger")
    log.info(f"Instantiating trainer <{cfg.trainer._target_}>")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if loggers:
        hparams = OmegaConf.to_container(cfg, resolve=True)
        hparams.update(extra_hparams or {})
        hparams["model/params/total"] = sum(p.numel() for p in model.parameters())
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)
    return trainer, loggers

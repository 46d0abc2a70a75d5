"""The project's loggers: a W&B logger whose offline/online switch is real, and a CSV logger that
survives spawned data-parallel processes (``trainer=ddp_sim``).

W&B: Lightning's ``WandbLogger(offline=False)`` leaves the mode to the ``WANDB_MODE`` variable, so a
process (or an earlier run in it) that set it to ``offline`` stays offline. :class:`WandbLogger`
hands ``wandb.init`` the mode the config asks for, turns a failed online start (no credentials, no
network within ``WANDB_INIT_TIMEOUT``) into one line that says how to log in or stay offline, and
groups the jobs of a Hydra multirun.

CSV: Lightning's CSV writer keeps the metric names it has seen in memory and rewrites the file's header
when new names appear. Under a spawning strategy, ``trainer.fit`` and ``trainer.test`` run in
different processes, each with its own copy of the writer: the test's copy has seen none of the
training names, so its rewrite drops them from the header and the rows already in the file no
longer fit (``ValueError: dict contains fields not in fieldnames``). This writer starts from the
header of the file it appends to.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from dcgmm.errors import ConfigError

__all__ = ["CSVLogger", "WandbLogger", "multirun_group"]


def multirun_group() -> str | None:
    """``<job name>-<sweep folder>`` inside a Hydra multirun (e.g. ``train-2026-12-06_10-00-00-000000``),
    the W&B group that keeps one sweep's jobs together; ``None`` in a single run or outside Hydra."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # Hydra not initialised (called from Python)
        return None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return f"{hydra_cfg.job.name}-{Path(hydra_cfg.sweep.dir).name}"


class WandbLogger(_WandbLogger):
    """Lightning's W&B logger, with the mode given to ``wandb.init`` explicitly.

    Args:
        offline: True (default): the run is written under ``save_dir/wandb/offline-run-*`` and
            nothing touches the network (upload later with ``wandb sync``); system metrics are
            off. False: the run logs online, system metrics (CPU, GPU, memory) included.
        group: the W&B group; ``None`` groups the jobs of a Hydra multirun (:func:`multirun_group`).
        **kwargs: Lightning's ``WandbLogger`` arguments and further ``wandb.init`` arguments.

    An online start that fails (no API key, no network within ``WANDB_INIT_TIMEOUT`` seconds)
    raises a one-line :class:`~dcgmm.errors.ConfigError` (exit status 2 from the entry points).
    """

    def __init__(self, offline: bool = True, group: str | None = None, **kwargs: Any) -> None:
        settings = dict(kwargs.pop("settings", None) or {})
        settings.setdefault("x_disable_stats", bool(offline))
        group = group or multirun_group()
        super().__init__(offline=offline, mode="offline" if offline else "online", settings=settings, group=group, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # W&B warns about the key even when it is None
            self._wandb_init.pop("anonymous", None)

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        import wandb  # imported with the first run, as Lightning does: a CSV-only run never loads it

        mode_before = os.environ.get("WANDB_MODE")
        try:
            return super().experiment
        except wandb.errors.Error as err:
            if self._offline:  # not the online start this message is about
                raise
            reason = " ".join(str(err).split()) or type(err).__name__
            raise ConfigError(
                f"W&B could not start online ({reason}); log in with `wandb login` (or set WANDB_API_KEY) and check the "
                f"network, or stay offline with logger.wandb.offline=true (upload later with `wandb sync`)"
            ) from err
        finally:  # Lightning's offline branch sets WANDB_MODE for the whole process; the mode is ours to give
            if mode_before is None:
                os.environ.pop("WANDB_MODE", None)
            else:
                os.environ["WANDB_MODE"] = mode_before


class _HeaderKeepingWriter(ExperimentWriter):
    def _record_new_keys(self) -> set[str]:
        if not self.metrics_keys and self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys.extend(next(csv.reader(file), []))
        return super()._record_new_keys()


class CSVLogger(_CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose writer keeps the columns already in the file."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HeaderKeepingWriter(log_dir=self.log_dir)
        return self._experiment

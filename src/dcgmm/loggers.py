"""A CSV logger that survives spawned data-parallel processes (``trainer=ddp_sim``).

Lightning's CSV writer keeps the metric names it has seen in memory and rewrites the file's header
when new names appear. Under a spawning strategy, ``trainer.fit`` and ``trainer.test`` run in
different processes, each with its own copy of the writer: the test's copy has seen none of the
training names, so its rewrite drops them from the header and the rows already in the file no
longer fit (``ValueError: dict contains fields not in fieldnames``). This writer starts from the
header of the file it appends to.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = ["CSVLogger"]


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

"""Helpers every benchmark shares: measurement in a fresh process, the machine's description, the
data and models they measure, the GEMM speed their ratios divide by.

Heavy libraries (torch, Lightning, the package) are imported inside the functions that need them,
so that ``python -m benchmarks.run --help`` answers at once.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import platform
import resource
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT / "data"
EPOCH_IMAGES = 60_000  # "seconds per epoch" is reported for a 60k-image epoch
# Other processes keeping more cores busy than this make the timings unreliable (flagged).
CONTENTION_CORES = 0.2


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> tuple[float, float]:
    """``(busy CPU seconds of the whole machine, CPU seconds of this process's finished children)``.

    The machine's busy time is read from the first line of ``/proc/stat`` (all states but idle
    and iowait); ``nan`` where that file does not exist.
    """
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    return busy, children.ru_utime + children.ru_stime


def run_isolated(function: Callable[..., dict], **kwargs: Any) -> dict:
    """Run ``function(**kwargs)`` in a freshly spawned Python process and return its result.

    The child starts from an empty interpreter, so its ``ru_maxrss`` is that measurement's own.
    Adds ``cpu_load``: over the child's lifetime, the average number of cores it kept busy and
    the average number that other processes on the machine kept busy (contention, which makes
    the timings unreliable when it is well above 0).
    """
    context = multiprocessing.get_context("spawn")
    busy_before, own_before = cpu_seconds()
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        result = pool.submit(function, **kwargs).result()
    wall = time.perf_counter() - start
    busy_after, own_after = cpu_seconds()
    own = own_after - own_before
    result["cpu_load"] = {
        "wall_seconds": wall,
        "own_cores": own / wall,
        "other_cores": max(busy_after - busy_before - own, 0.0) / wall,
    }
    return result


def quiet_libraries() -> None:
    """Silence Lightning's start-up banners and advisory warnings inside a measurement process."""
    import logging
    import warnings

    import lightning  # noqa: F401  (sets its loggers' levels on import; override them after)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def machine_info() -> dict:
    """CPU model, core counts, Python and library versions, and the date: the context of the numbers."""
    from dcgmm.training.runtime import cpu_model as read_cpu_model

    cpu_model = read_cpu_model()
    versions = {}
    for package in ("torch", "lightning", "scikit-learn", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def load_images(dataset: str, data_dir: str, batch_size: int):
    """An :class:`ImageDataModule` holding the full training split (no validation images)."""
    from dcgmm.data import ImageDataModule

    datamodule = ImageDataModule(name=dataset, data_dir=data_dir, val_size=0, batch_size=batch_size)
    datamodule.setup()
    return datamodule


def epoch_timer():
    """A Lightning callback that records the wall time of every training epoch in ``.seconds``."""
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        """Wall time from the start to the end of each training epoch (all steps and hooks)."""

        def __init__(self) -> None:
            """No epochs timed yet."""
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            """Start the clock."""
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            """Record the epoch's wall seconds."""
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def build_module(name: str):
    """``DCGMMModule`` of ``model=<name>`` as shipped (dcgmm.app.config.build_model)."""
    from dcgmm.app.config import build_model

    return build_model(name)


def gemm_gflops(size: int = 1024, repeats: int = 20) -> float:
    """fp32 GEMM speed of this process's torch threads, GFLOP/s (best of three timings).

    Training speeds are also reported as images/s per GEMM-GFLOP/s measured in the same run, so
    that figures from different machines, or from one machine under different load, compare.
    """
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, repeats * 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best

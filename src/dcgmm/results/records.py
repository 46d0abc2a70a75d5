"""Run records: one JSON file per finished run (``<records>/<dataset>/<name>.json``), meant to be
committed. A record holds the run's numbers, its settings' key (:func:`dcgmm.results.plan.run_key`),
the record version, the preset, the machine and the time; the table is aggregated from records
alone. Records are written atomically (a temporary file, then a rename), so two launches of the
same preset at once never leave a half-written record."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

from dcgmm.data.sources import atomic_file
from dcgmm.errors import ConfigError
from dcgmm.results.plan import Planner, run_key
from dcgmm.training.runtime import cpu_model

__all__ = ["RECORD_VERSION", "RecordError", "check_records", "code_version", "machine_info", "now", "read_record", "write_json"]

# bump it whenever a change to training, evaluation or the record's fields makes records written
# before it incomparable: a relaunch then refuses the old records instead of mixing them into a table
RECORD_VERSION = 2


class RecordError(ConfigError):
    """A run record that cannot be mixed into this table (one-line message naming the file)."""


def now() -> str:
    return dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def code_version(root: Path | None = None) -> str:
    """The commit of the checkout the code runs from (``+changes`` when its tracked files differ,
    outside ``results/``: records and reports are what a launch writes, not the code that ran),
    or the installed package's version outside a checkout."""
    root = root or Path(__file__).resolve().parents[3]  # src/dcgmm/results/records.py -> the checkout
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"dcgmm {importlib.metadata.version('dcgmm')}"
    return commit + ("+changes" if changed else "")


def machine_info(threads: int) -> dict:
    import lightning
    import sklearn
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(cpu=cpu_model(), cores=cores, torch_threads=threads, torch=torch.__version__, lightning=lightning.__version__,
                sklearn=sklearn.__version__, python=platform.python_version(), platform=platform.platform())


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_json(path: Path, payload: dict) -> None:
    """``payload`` as indented JSON, atomically."""
    with atomic_file(Path(path)) as out:
        out.write((json.dumps(payload, indent=2, default=_json_default) + "\n").encode())


def read_record(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise RecordError(f"{path}: not a readable run record ({type(err).__name__}); move it away and relaunch") from None


def check_records(planner: Planner, records_dir: Path, preset_name: str, same_settings: bool = True) -> tuple[dict[str, dict], dict[str, str]]:
    """The finished records of the planned runs and the errors of failed ones: ``({key: record},
    {key: error})``, checked before anything trains.

    Every record below ``records_dir`` must come from this preset and this record version, and a
    planned run's record from the run's settings (its key); otherwise :class:`RecordError` names
    the file. Failed runs are trained again (their key is not checked); records of runs this plan
    does not hold (another ``datasets=``) are kept and not used. ``same_settings=False`` takes a
    finished record whatever its settings (an evaluation pass tests the models that exist).
    """
    records: dict[str, dict] = {}
    failures: dict[str, str] = {}
    records_dir = Path(records_dir)
    for path in sorted(records_dir.rglob("*.json")) if records_dir.exists() else []:
        record = read_record(path)
        version, origin = record.get("record_version"), record.get("preset")
        if version != RECORD_VERSION:
            raise RecordError(f"{path}: written by another code version (record version {version}, this code writes {RECORD_VERSION}); "
                              "move it away so that the run is trained again")
        if origin != preset_name:
            raise RecordError(f"{path}: a record of preset {origin!r}, not {preset_name!r}; move it to results/runs/{origin}/ or away")
        spec = planner.runs.get(path.relative_to(records_dir).with_suffix("").as_posix())
        if spec is None:
            continue
        if record.get("error"):
            failures[spec.key] = str(record["error"])
        elif same_settings and record.get("key") != run_key(spec, planner.preset):
            raise RecordError(f"{path}: made with other settings than the run planned now (overrides, K or preset values changed); "
                              "move it away to train it again")
        else:
            records[spec.key] = record
    return records, failures

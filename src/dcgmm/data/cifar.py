"""CIFAR-10 (Krizhevsky 2009): 50000 train / 10000 test colour images, 3 x 32 x 32, 10 classes.

Read from either standard distribution, in this order, found in a folder (``data.local_dir`` or
``<data_dir>/downloads/cifar10/``):

* the binary version: ``cifar-10-binary.tar.gz``, or its folder ``cifar-10-batches-bin/``, or its
  files ``data_batch_{1..5}.bin`` and ``test_batch.bin`` themselves. Each record is one label byte
  followed by 3072 pixel bytes: the 1024 red, then green, then blue values of a 32 x 32 image in
  row-major order.
* the Python version: ``cifar-10-python.tar.gz``, its folder ``cifar-10-batches-py/`` or its files
  ``data_batch_{1..5}`` and ``test_batch``: pickled dicts with ``data`` uint8 (n, 3072) in the
  same layout and ``labels`` (n,). They are unpickled with a loader that refuses everything but
  plain numpy arrays, lists and dicts.

Downloads (when online) fetch the binary version. Arrays come out as uint8 (N, 32, 32, 3).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from dcgmm.data.errors import DataError
from dcgmm.data.sources import (
    Arrays,
    DatasetInfo,
    SourceUnavailable,
    _NumpyUnpickler,
    register_dataset,
    validate_arrays,
)

__all__ = ["CIFAR10", "read_cifar10_folder"]

SIDE = 32
RECORD = 1 + 3 * SIDE * SIDE  # label byte + pixels
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
# (archive, its folder, file suffix) of the two distributions, in order of preference
LAYOUTS = (
    ("cifar-10-binary.tar.gz", "cifar-10-batches-bin", ".bin"),
    ("cifar-10-python.tar.gz", "cifar-10-batches-py", ""),
)


def _members(folder: Path, archive: str, subdir: str, suffix: str) -> dict[str, bytes] | None:
    """The 6 batch files of one distribution found in ``folder`` (as loose files, in the extracted
    folder or inside the archive), keyed by batch name; ``None`` when this distribution is absent."""
    names = [*TRAIN_BATCHES, TEST_BATCH]
    for base in (folder, folder / subdir):
        files = [base / f"{name}{suffix}" for name in names]
        if all(f.is_file() for f in files):
            return {name: f.read_bytes() for name, f in zip(names, files, strict=True)}
    tar_path = folder / archive
    if not tar_path.is_file():
        return None
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            out = {}
            for name in names:
                member = tar.extractfile(f"{subdir}/{name}{suffix}")
                if member is None:
                    raise KeyError(name)
                out[name] = member.read()
            return out
    except KeyError as e:
        raise DataError(f"{tar_path} lacks {subdir}/{e.args[0]}{suffix}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{tar_path} is not a readable tar archive ({e})") from None


def _from_binary(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch -> images uint8 (n, 32, 32, 3), labels (n,)."""
    if len(raw) == 0 or len(raw) % RECORD:
        raise DataError(f"{where} holds {len(raw)} bytes, not a whole number of {RECORD}-byte records")
    records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD)
    images = records[:, 1:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)  # (n, H, W, C)
    return images, records[:, 0].astype(np.int64)


def _from_pickle(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One Python-version batch (a pickled dict) -> images uint8 (n, 32, 32, 3), labels (n,)."""
    try:
        batch = _NumpyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # any failure inside the pickle means a broken file
        raise DataError(f"{where}: cannot unpickle ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{where} is not a pickled dict")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{where} lacks the 'data' or 'labels' entry")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != RECORD - 1:
        raise DataError(f"{where}: 'data' must be uint8 (n, {RECORD - 1}), got {data.dtype} {data.shape}")
    images = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return images, np.asarray(batch["labels"], dtype=np.int64)


def read_cifar10_folder(folder: str | Path, fix: str) -> Arrays:
    """Read CIFAR-10 from ``folder`` (binary or Python distribution, see the module docstring).

    Returns:
        Validated arrays: images uint8 (N, 32, 32, 3), labels int64 (N,) in 0..9.

    Raises:
        SourceUnavailable: neither distribution is in ``folder``.
        DataError: a file is broken (truncated record, bad pickle, missing member).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SourceUnavailable(f"{folder} does not exist or is not a folder; {fix}")
    for archive, subdir, suffix in LAYOUTS:
        try:
            raw = _members(folder, archive, subdir, suffix)
        except DataError as e:
            raise DataError(f"{e}; {fix}") from None
        if raw is None:
            continue
        parse = _from_binary if suffix == ".bin" else _from_pickle
        try:
            parts = {name: parse(data, f"{folder}/{name}{suffix}") for name, data in raw.items()}
        except DataError as e:
            raise DataError(f"{e}; {fix}") from None
        arrays = {
            "train_x": np.concatenate([parts[n][0] for n in TRAIN_BATCHES]),
            "train_y": np.concatenate([parts[n][1] for n in TRAIN_BATCHES]),
            "test_x": parts[TEST_BATCH][0],
            "test_y": parts[TEST_BATCH][1],
        }
        return validate_arrays(arrays, str(folder), fix, CIFAR10)
    raise SourceUnavailable(f"{folder} holds neither {LAYOUTS[0][0]} nor {LAYOUTS[1][0]} (or their files); {fix}")


CIFAR10 = register_dataset(
    DatasetInfo(
        name="cifar10",
        title="CIFAR-10",
        image_shape=(3, SIDE, SIDE),
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        local_files="cifar-10-binary.tar.gz or cifar-10-python.tar.gz (or their extracted batch files)",
        read_folder=read_cifar10_folder,
        downloads=(LAYOUTS[0][0],),
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        aliases=("cifar-10", "cifar_10", "cifar"),
    )
)

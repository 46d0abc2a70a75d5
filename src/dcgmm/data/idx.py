"""Reader and writer for the IDX format used by the MNIST family of datasets.

An IDX file starts with a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``,
followed by ``ndim`` big-endian uint32 dimension sizes and the row-major payload.
Files may be gzip-compressed (detected from the gzip magic bytes, not the name).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from dcgmm.data.errors import DataError

__all__ = ["IDX_DTYPES", "read_idx", "write_idx"]

# IDX dtype code -> numpy dtype (payload is big-endian).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_DEFAULT_FIX = "delete it and re-download (bash scripts/fetch_data.sh)"


def _read_bytes(path: Path, fix: str) -> bytes:
    """Return the (decompressed) content of ``path``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; {fix}") from None
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e}); {fix}") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path} is a corrupt or truncated gzip file ({e}); {fix}") from None


def read_idx(path: str | os.PathLike[str], *, fix: str = _DEFAULT_FIX) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a numpy array.

    Args:
        path: the file to read.
        fix: advice appended to error messages (what the user should do).

    Returns:
        An array with the shape stored in the header, in native byte order
        (``uint8`` for the MNIST image and label files).

    Raises:
        DataError: the file is missing, unreadable, has a bad magic number or
            dtype code, or its payload is shorter or longer than the header says.
    """
    path = Path(path)
    data = _read_bytes(path, fix)
    if len(data) < 4:
        raise DataError(f"{path} is not an IDX file: only {len(data)} bytes; {fix}")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise DataError(
            f"{path} is not an IDX file: bad magic number 0x{data[:4].hex()} "
            f"(expected 0x0000 followed by a dtype code and ndim); {fix}"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{path} has unknown IDX dtype code 0x{code:02X} (known: {known}); {fix}")
    if ndim == 0:
        raise DataError(f"{path} is not a valid IDX file: header says 0 dimensions; {fix}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{path} is truncated: header declares {ndim} dimensions but the file holds {len(data)} bytes; {fix}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "oversized"
        dims = "x".join(str(s) for s in shape)
        raise DataError(
            f"{path} is {what}: header says {dims} ({expected} payload bytes) but holds {actual} bytes; {fix}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    # Native byte order and a writable, owned buffer.
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file, gzip-compressed if ``path`` ends in ``.gz``.

    Args:
        path: destination file; parent folders are created.
        array: uint8 array with 1 to 255 dimensions (e.g. (N, 28, 28) images
            or (N,) labels). Other integer arrays are accepted if every value
            fits in 0..255.

    Returns:
        The path written.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim < 1 or array.ndim > 255:
        raise ValueError(f"write_idx needs an array with 1..255 dimensions, got shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer) or (array.size and (array.min() < 0 or array.max() > 255)):
            raise ValueError(f"write_idx writes uint8 only; got {array.dtype} with values outside 0..255")
        array = array.astype(np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path

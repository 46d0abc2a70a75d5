"""SVHN (Netzer et al. 2011), cropped digits: 73257 train / 26032 test colour images, 3 x 32 x 32.

Read from the standard "format 2" files ``train_32x32.mat`` and ``test_32x32.mat`` (MATLAB v5,
read with :func:`scipy.io.loadmat`) in a folder (``data.local_dir`` or
``<data_dir>/downloads/svhn/``): ``X`` uint8 (32, 32, 3, n) and ``y`` (n, 1) with the labels 1..10,
where 10 stands for the digit 0. Class ids here are the digits (label 10 -> 0), as in
torchvision. The 531131 ``extra`` images are not used. Arrays come out as uint8 (N, 32, 32, 3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcgmm.data.errors import DataError
from dcgmm.data.sources import Arrays, DatasetInfo, SourceUnavailable, register_dataset, validate_arrays

__all__ = ["SVHN", "read_svhn_folder"]

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def _read_mat(path: Path, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """One ``.mat`` file -> images uint8 (n, 32, 32, 3), digit labels int64 (n,) in 0..9."""
    from scipy.io import loadmat  # scipy is a dependency of scikit-learn

    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # any failure of the MATLAB reader means a broken file
        raise DataError(f"{path} is not a readable MATLAB file ({type(e).__name__}: {e}); {fix}") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} lacks the variables X and y; {fix}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X must be uint8 (32, 32, 3, n), got {x.dtype} {x.shape}; {fix}")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{path}: y must hold the labels 1..10, found {int(y.min())}..{int(y.max())}; {fix}")
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), (y.astype(np.int64) % 10)


def read_svhn_folder(folder: str | Path, fix: str) -> Arrays:
    """Read SVHN's ``train_32x32.mat`` and ``test_32x32.mat`` from ``folder``.

    Returns:
        Validated arrays: images uint8 (N, 32, 32, 3), labels int64 (N,) in 0..9.

    Raises:
        SourceUnavailable: the folder or one of the files is missing.
        DataError: a file is broken or holds something else.
    """
    folder = Path(folder).expanduser()
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise SourceUnavailable(f"{folder} lacks {', '.join(missing)}; {fix}")
    arrays = {}
    for split, name in FILES.items():
        arrays[f"{split}_x"], arrays[f"{split}_y"] = _read_mat(folder / name, fix)
    return validate_arrays(arrays, str(folder), fix, SVHN)


SVHN = register_dataset(
    DatasetInfo(
        name="svhn",
        title="SVHN",
        image_shape=(3, 32, 32),
        class_names=tuple(str(i) for i in range(10)),
        local_files="train_32x32.mat and test_32x32.mat",
        read_folder=read_svhn_folder,
        downloads=tuple(FILES.values()),
        mirrors=("http://ufldl.stanford.edu/housenumbers/",),
    )
)

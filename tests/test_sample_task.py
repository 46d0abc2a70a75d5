"""sample.py: every mode writes a grid from a checkpoint; bad requests are one-line errors."""

import subprocess
import sys

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dcgmm.app.checkpoints import load_module
from dcgmm.app.config import model_config
from dcgmm.app.tasks import sample
from dcgmm.errors import ConfigError
from tests.conftest import ROOT, needs_mnist


def write_checkpoint(path, model: str = "dcgmm2", **updates) -> str:
    """An untrained model of a topology config saved as a Lightning checkpoint."""
    cfg = model_config(model)
    for key, value in updates.items():
        OmegaConf.update(cfg, key, value)
    module = instantiate(cfg)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return str(path)


def test_checkpoint_round_trip_rebuilds_the_model(tmp_path):
    ckpt = write_checkpoint(tmp_path / "m.ckpt")
    module = load_module(ckpt)
    assert [layer.kind for layer in module.stack.layers] == ["folding", "gmm", "folding", "gmm", "classifier"]
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    for key, value in module.state_dict().items():
        if key in saved and isinstance(value, torch.Tensor):
            assert torch.equal(value, saved[key]), key


@needs_mnist
@pytest.mark.parametrize("mode", ["unconditional", "conditional", "variants", "inpaint"])
def test_every_mode_writes_a_grid(sample_cfg, tmp_path, mode):
    ckpt = write_checkpoint(tmp_path / "m.ckpt")
    result = sample(sample_cfg(f"ckpt_path={ckpt}", "n=6", f"mode={mode}", "logger=csv"))
    assert result["path"].exists() and result["images"].shape == (6, 1, 28, 28)
    assert result["images"].min() >= 0 and result["images"].max() <= 1


def test_scale_repeats_every_pixel_of_the_grid(sample_cfg, tmp_path):
    import numpy as np
    from PIL import Image

    ckpt = write_checkpoint(tmp_path / "m.ckpt")
    plain, scaled = (np.asarray(Image.open(sample(sample_cfg(f"ckpt_path={ckpt}", "n=4", "logger=none", f"scale={s}",
                                                             f"hydra.run.dir={tmp_path / str(s)}", f"paths.output_dir={tmp_path / str(s)}"))["path"]))
                     for s in (1, 3))
    assert scaled.shape == (3 * plain.shape[0], 3 * plain.shape[1])
    assert np.array_equal(scaled[::3, ::3], plain) and np.array_equal(scaled[2::3, 1::3], plain)


def test_sharpened_sampling_runs(sample_cfg, tmp_path):
    ckpt = write_checkpoint(tmp_path / "m.ckpt")
    cfg = sample_cfg(f"ckpt_path={ckpt}", "n=4", "sharpening.enabled=true", "sharpening.iterations=3", "sharpening.progress=false", "logger=none")
    assert sample(cfg)["images"].shape == (4, 1, 28, 28)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["ckpt_path=/no/such.ckpt"], "does not exist"),
        (["n=0"], "n=0 must be a positive"),
        (["top_s=50"], r"top_s=50 must lie in \[1, K="),
        (["divisor=0"], "divisor=0.0 must be > 0"),
        (["mode=conditional", "classes=[3,12]"], r"classes \[12\] are not among"),
        (["mode=dream"], "mode='dream' is unknown"),
        (["sharpening.enabled=true", "sharpening.target=2"], "target=2 is not a gmm layer"),
        (["device=tpu"], "device='tpu' is"),
        (["scale=0"], r"scale=0 must be a positive integer \(pixels of the grid per image pixel\)"),
        pytest.param(["device=cuda"], r"device=cuda but 0 CUDA GPU\(s\) are visible here; use device=cpu",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
    ],
)
def test_bad_sample_requests(sample_cfg, tmp_path, overrides, match):
    ckpt = write_checkpoint(tmp_path / "m.ckpt")
    cfg = sample_cfg(f"ckpt_path={ckpt}", "logger=none", *overrides)
    with pytest.raises(ConfigError, match=match) as info:
        sample(cfg)
    assert "\n" not in str(info.value)


def test_conditional_without_classifier(sample_cfg, tmp_path):
    ckpt = write_checkpoint(tmp_path / "m.ckpt", "flat_gmm", layers=[{"kind": "folding", "kernel_size": 28}, {"kind": "gmm"}])
    with pytest.raises(ConfigError, match="needs a model with a classifier"):
        sample(sample_cfg(f"ckpt_path={ckpt}", "mode=conditional", "logger=none"))


def test_cli_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("not a checkpoint")
    result = subprocess.run([sys.executable, "sample.py", f"ckpt_path={bogus}", f"paths.log_dir={tmp_path}", "logger=none"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: ckpt_path={bogus} is not a readable checkpoint")


def test_auto_device_samples_where_the_model_is(sample_cfg, tmp_path):
    """device=auto picks a GPU when there is one; the images come back on the CPU either way."""
    ckpt = write_checkpoint(tmp_path / "m.ckpt")
    out = sample(sample_cfg(f"ckpt_path={ckpt}", "logger=none", "device=auto", "n=8"))
    assert out["images"].device.type == "cpu" and out["images"].shape[0] == 8


@needs_mnist
@pytest.mark.parametrize("mask", [["mask=right_half"], ["mask=top_half"], ["mask=box", "box=[8,8,12,12]"]], ids=["right_half", "top_half", "box"])
def test_inpainting_through_sample_py_and_the_estimator_gives_the_same_pixels(sample_cfg, tmp_path, mask):
    """One mask convention (True = missing, dcgmm.core.sampling.missing_pixels) and one sampler
    behind both faces: the same checkpoint, images, mask and seed give the same pixels."""
    from dcgmm import DCGMMEstimator
    from dcgmm.data import load_dataset
    from tests.reference.record import CHECKPOINT

    result = sample(sample_cfg(f"ckpt_path={CHECKPOINT}", "n=5", "mode=inpaint", "seed=3", "logger=none", *mask))
    images = torch.from_numpy(load_dataset("mnist", str(ROOT / "data"))["test_x"][:5]).unsqueeze(1).float() / 255
    settings = dict(item.split("=", 1) for item in mask)
    box = [int(v) for v in settings["box"].strip("[]").split(",")] if "box" in settings else None
    filled = DCGMMEstimator.load(CHECKPOINT, device="cpu").inpaint(images, settings["mask"], box=box, seed=3)
    assert torch.equal(result["images"], filled)
    missing = torch.zeros(1, 1, 28, 28, dtype=torch.bool)
    if settings["mask"] == "right_half":
        missing[..., 14:] = True
    elif settings["mask"] == "top_half":
        missing[..., :14, :] = True
    else:
        missing[..., 8:20, 8:20] = True
    assert torch.equal(filled[~missing.expand_as(filled)], images[~missing.expand_as(images)])  # the known pixels, bit for bit
    assert not torch.equal(filled[missing.expand_as(filled)], images[missing.expand_as(images)])

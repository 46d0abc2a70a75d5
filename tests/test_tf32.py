"""TF32 (dcgmm.training.runtime): reported numbers in IEEE float32 whatever the process-wide setting;
training steps in TF32 only with model.tf32=true; the setting is put back afterwards. The switches
are process-wide flags, so the CPU can check who sets them when."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from dcgmm.app.config import build_model
from dcgmm.data.datamodule import EpochSeededSampler, TensorBatchDataset, keep_batch
from dcgmm.training.runtime import _tf32_switches, exact_float32, restore_tf32, set_tf32


def tf32_now() -> tuple:
    """The current value of every TF32 switch (matrix products, convolutions)."""
    return tuple(getattr(backend, name) for backend, name, _, _ in _tf32_switches())


ON = tuple(tf32 for _, _, tf32, _ in _tf32_switches())
OFF = tuple(ieee for _, _, _, ieee in _tf32_switches())


@pytest.fixture
def tf32_outside():
    """TF32 switched on process-wide (as torch.set_float32_matmul_precision("high") and cuDNN's
    default do), and the original settings put back after the test."""
    previous = set_tf32(True)
    yield
    restore_tf32(previous)


def test_exact_float32_switches_off_and_restores(tf32_outside):
    with exact_float32():
        assert tf32_now() == OFF
    assert tf32_now() == ON


@pytest.mark.parametrize("tf32", [False, True])
def test_training_steps_follow_model_tf32_and_evaluation_is_always_ieee(tf32_outside, monkeypatch, tf32):
    module = build_model("flat_gmm", ["model.K=4", f"model.tf32={str(tf32).lower()}"])
    seen = {"train": set(), "val": set(), "test": set(), "predict": set()}
    for stage, hook in (("train", "training_step"), ("val", "validation_step"), ("test", "test_step"), ("predict", "predict_step")):
        original = getattr(module, hook)
        monkeypatch.setattr(module, hook, lambda *a, _o=original, _s=stage, **k: (seen[_s].add(tf32_now()), _o(*a, **k))[1])
    g = torch.Generator().manual_seed(0)
    data = TensorBatchDataset(torch.rand(200, 1, 28, 28, generator=g), torch.randint(0, 10, (200,), generator=g))
    loader = DataLoader(data, batch_size=50, sampler=EpochSeededSampler(200, 0), collate_fn=keep_batch)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0)
    trainer.fit(module, loader, loader)
    assert tf32_now() == ON  # put back after fit
    trainer.test(module, loader, verbose=False)
    trainer.predict(module, loader)
    assert seen["train"] == {ON if tf32 else OFF}
    assert seen["val"] == seen["test"] == seen["predict"] == {OFF}
    assert tf32_now() == ON

"""The progress bar redraws by elapsed time: few redraws for fast steps, regular ones for slow steps."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from dcgmm.app.callbacks import ProgressBar
from dcgmm.app.callbacks import progress as progress_module
from dcgmm.app.module import DCGMMModule
from dcgmm.data.datamodule import TensorBatchDataset, keep_batch
from dcgmm.errors import ConfigError


def test_redraws_when_refresh_seconds_have_passed_and_at_the_last_batch(monkeypatch):
    clock = iter([0.0, 0.3, 0.9, 1.2, 1.5, 1.6, 2.3])
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    bar = ProgressBar(refresh_seconds=1.0)
    drawn = [n for n in range(1, 8) if bar._should_update(n, 7)]
    # 1 (the first, t=0), 4 (t=1.2: 1.2 s after 1), 7 (the last batch: drawn whatever the time)
    assert drawn == [1, 4, 7]


def test_refresh_rate_still_limits_and_zero_hides_the_bar(monkeypatch):
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: 0.0)
    assert [n for n in range(1, 10) if ProgressBar(refresh_seconds=0.0, refresh_rate=3)._should_update(n, 9)] == [3, 6, 9]
    assert not ProgressBar(refresh_rate=0)._should_update(9, 9)


def train_redraws(refresh_seconds: float, batches: int = 12) -> list[int]:
    """The batch index at each redraw of the training bar's values in one epoch."""
    bar = ProgressBar(refresh_seconds=refresh_seconds)
    redraws = []
    original = bar.get_metrics
    bar.get_metrics = lambda trainer, module: redraws.append(trainer.fit_loop.epoch_loop.batch_idx) or original(trainer, module)
    x = torch.rand(batches * 10, 4, 1, 1)
    loader = DataLoader(TensorBatchDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=10, collate_fn=keep_batch)
    module = DCGMMModule(layers=[{"kind": "gmm"}], input_shape=(4, 1, 1), K=4, anneal=False)
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
              callbacks=[bar]).fit(module, loader)
    return redraws


def test_through_lightning_a_long_refresh_draws_the_first_and_last_batch_only():
    # the batches drawn, then Lightning's own redraw at the end of the epoch (batch 11 again)
    assert train_redraws(refresh_seconds=3600.0) == [0, 11, 11]
    assert train_redraws(refresh_seconds=0.0) == [*range(12), 11]


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_bad_refresh_seconds(bad):
    with pytest.raises(ConfigError, match="refresh_seconds"):
        ProgressBar(refresh_seconds=bad)

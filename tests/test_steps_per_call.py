"""model.steps_per_call: several SGD steps per call of Lightning's training loop give the updates,
annealing decisions, waits and epoch losses of one step per call."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from dcgmm.app.callbacks import TrainingSpeed
from dcgmm.app.config import build_model
from dcgmm.data.datamodule import EpochBatches, EpochSeededSampler, ImageDataModule, TensorBatchDataset, keep_batch
from dcgmm.errors import ConfigError
from tests.conftest import compose_train
from tests.test_data import make_arrays, write_idx_folder

STEPS, BATCH = 31, 50


def make(steps_per_call: int, **overrides):
    torch.manual_seed(0)
    settings = {"annealing.window": 3, "annealing.delta": 100, "layers.3.wait": 0.34, "steps_per_call": steps_per_call, **overrides}
    return build_model("dcgmm2", [f"model.{k}={v}" for k, v in settings.items()])


def fit(steps_per_call: int, labels: bool = True, epochs: int = 1, speed: TrainingSpeed | None = None, trainer_args: dict | None = None,
        batches: int = STEPS, **overrides):
    """Topology B trained ``epochs`` epochs of 31 batches of 50 fixed random images (3-step annealing
    windows whose threshold shrinks sigma and lr at every decision; layer 3 waits a third of the
    run), the module taking ``steps_per_call`` batches from the loader per call of Lightning's loop."""
    module = make(steps_per_call, **overrides)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batches * BATCH, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batches * BATCH,), generator=g) if labels else None
    sampler = EpochBatches(EpochSeededSampler(len(x), 0), BATCH)
    loader = DataLoader(TensorBatchDataset(x, y), batch_size=None, sampler=sampler, collate_fn=keep_batch)
    settings = dict(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, use_distributed_sampler=False, callbacks=[speed] if speed else None)
    trainer = L.Trainer(**{**settings, **(trainer_args or {})})
    trainer.fit(module, loader)
    return module, trainer


@pytest.mark.parametrize("labels", [True, False])
@pytest.mark.parametrize("overrides", [{}, {"cuda_graph": True}], ids=["eager", "graphed-step"])
def test_groups_of_steps_train_as_one_step_per_call(labels, overrides):
    class Calls(Callback):
        calls = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.calls += 1

    calls = Calls()
    one, one_trainer = fit(1, labels)
    grouped, grouped_trainer = fit(4, labels, trainer_args={"callbacks": [calls]}, **overrides)  # 7 calls of 4 and one of 3
    assert one.automatic_optimization and not grouped.automatic_optimization
    assert grouped_trainer.global_step == one_trainer.global_step == STEPS  # SGD steps, not calls
    assert calls.calls == 8 and grouped_trainer.num_training_batches == STEPS  # the loader yields plain batches
    assert grouped.total_steps == one.total_steps == STEPS  # the wait fraction counts SGD steps
    assert grouped.annealing.values() == one.annealing.values()  # the same sigma / lr decisions
    assert grouped.annealing.values()[0][0] < grouped.schedules[1].default_sigma0(49)  # and sigma did shrink
    reference = dict(one.named_parameters())
    for name, param in grouped.named_parameters():
        torch.testing.assert_close(param, reference[name], rtol=1e-6, atol=1e-6, msg=name)
    torch.testing.assert_close(grouped_trainer.callback_metrics["train/loss_epoch"], one_trainer.callback_metrics["train/loss_epoch"])


def test_a_waiting_layer_starts_at_the_same_step_inside_a_group():
    """Layer 3 waits 0.34 of 62 steps (2 epochs): it first learns at step 22, inside the 6th group of 4."""
    one, _ = fit(1, epochs=2)
    grouped, _ = fit(4, epochs=2)
    assert grouped.total_steps == one.total_steps == 2 * STEPS
    # the classifier reads layer 3 and layer 3 learned the same number of steps in both runs
    torch.testing.assert_close(grouped.stack.layers[3].means, one.stack.layers[3].means, rtol=1e-6, atol=1e-6)


def test_the_speed_callback_counts_the_steps_and_images_of_groups():
    speed = TrainingSpeed()
    fit(4, speed=speed)
    assert speed.train_steps == STEPS and speed.train_images == STEPS * BATCH


@pytest.mark.parametrize("steps_per_call", [0, -2, 1.5, True])
def test_steps_per_call_must_be_a_positive_integer(steps_per_call):
    with pytest.raises(ConfigError, match="steps_per_call") as info:
        build_model("flat_gmm", [f"model.steps_per_call={steps_per_call}"])
    assert "\n" not in str(info.value)


def test_the_data_knows_nothing_of_it_and_ddp_is_refused(tmp_path):
    from dcgmm.app.engine_checks import check_steps_per_call

    cfg = compose_train(["model.steps_per_call=5"], tmp_path)
    assert "steps_per_call" not in cfg.data  # the data module yields plain batches
    check_steps_per_call(cfg.model, cfg.trainer)  # one process: fine
    ddp = compose_train(["model.steps_per_call=5", "trainer=ddp_sim", "trainer.devices=2"], tmp_path)
    with pytest.raises(ConfigError, match="model.steps_per_call=1 for data-parallel training") as info:
        check_steps_per_call(ddp.model, ddp.trainer)
    assert "\n" not in str(info.value)


def test_the_logger_step_axis_counts_sgd_steps(tmp_path):
    """Every logged row (training steps, epoch ends, validation, test, and a callback's validation
    and test metrics) lands on the same step and epoch with the same values as with one step per call."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    from dcgmm.app.callbacks import TopLayerMetrics

    rows = {}
    for steps in (1, 5):
        module = make(steps)
        g = torch.Generator().manual_seed(1)
        x, y = torch.rand(40 * 20, 1, 28, 28, generator=g), torch.randint(0, 10, (40 * 20,), generator=g)
        loader = DataLoader(TensorBatchDataset(x, y), batch_size=None, sampler=EpochBatches(EpochSeededSampler(len(x), 0), 20),
                            collate_fn=keep_batch)
        val = DataLoader(TensorBatchDataset(x[:60], y[:60]), batch_size=30, collate_fn=keep_batch)
        logger = CSVLogger(tmp_path, name=f"s{steps}")
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=10, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                            callbacks=[TopLayerMetrics(stages=["val", "test"], num_classes=10)])
        trainer.fit(module, loader, val)
        trainer.test(module, val)
        with open(f"{logger.log_dir}/metrics.csv") as f:
            rows[steps] = [{key: value for key, value in row.items() if value} for row in csv.DictReader(f)]
    train_rows = [row for row in rows[1] if "train/loss" in row]
    assert [row["step"] for row in train_rows] == [str(s) for s in range(9, 80, 10)]  # steps 10, 20, ..., 80 (0-based 9, 19, ...)
    assert {"train/loss_epoch", "val/loss", "val/cluster/nmi", "test/loss", "test/cluster/nmi"} <= {key for row in rows[1] for key in row}

    def by_step(table):  # {(step, metric): (epoch, value)}: the rows of one step may be split differently
        return {(row["step"], key): (row["epoch"], float(value)) for row in table for key, value in row.items() if key not in ("step", "epoch")}

    one, grouped = by_step(rows[1]), by_step(rows[5])
    assert set(grouped) == set(one)
    for where, (epoch, value) in one.items():
        assert grouped[where][0] == epoch and math.isclose(grouped[where][1], value, rel_tol=1e-5), where


def test_an_int_batch_limit_counts_sgd_batches(tmp_path):
    """trainer.limit_train_batches=7 with 3 steps per call: 7 SGD steps an epoch, in calls of 3, 3 and
    1, also through the on-device path; the wait fractions see 14 steps in 2 epochs; a fraction
    counts SGD batches too."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    folder = write_idx_folder(tmp_path / "idx", make_arrays(n_train=530))
    for on_device in (False, True):
        dm = ImageDataModule("mnist", data_dir=str(tmp_path / "data"), local_dir=str(folder), val_size=30, batch_size=20,
                             on_device=on_device)
        module = build_model("flat_gmm", ["model.steps_per_call=3", "model.K=4", "model.anneal=false"])
        speed = TrainingSpeed()
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name=f"limit{on_device}"),
                            log_every_n_steps=3, enable_checkpointing=False, limit_train_batches=7, limit_val_batches=0,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[speed])
        trainer.fit(module, dm)
        assert trainer.num_training_batches == 7 and trainer.global_step == 14 and module.total_steps == 14
        assert speed.train_steps == 14 and speed.train_images == 14 * 20
        with open(tmp_path / f"limit{on_device}" / "version_0" / "metrics.csv") as f:
            logged = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
        assert logged == [2, 5]  # calls end at steps 3, 6, 7, 10, 13, 14: those on multiples of 3, 0-based
    _, trainer = fit(3, trainer_args={"limit_train_batches": 0.5})
    assert trainer.num_training_batches == 15 and trainer.global_step == 15  # half of 31 batches


def test_max_steps_stops_inside_a_group():
    """max_steps=10 with groups of 4: the third group stops after its second batch, as one step per
    call stops; the wait fractions count the 10 steps."""
    one, one_trainer = fit(1, epochs=2, trainer_args={"max_steps": 10})
    grouped, grouped_trainer = fit(4, epochs=2, trainer_args={"max_steps": 10})
    assert grouped_trainer.global_step == one_trainer.global_step == 10
    assert grouped.total_steps == one.total_steps == 10
    for name, param in grouped.named_parameters():
        torch.testing.assert_close(param, dict(one.named_parameters())[name], rtol=1e-6, atol=1e-6, msg=name)


def test_mixed_precision_groups_train_as_one_step_per_call():
    """bf16-mixed: the backward runs outside the autocast region of the training step, as in the
    automatic path, so groups give the same updates."""
    one, _ = fit(1, trainer_args={"precision": "bf16-mixed"})
    grouped, _ = fit(4, trainer_args={"precision": "bf16-mixed"})
    for name, param in grouped.named_parameters():
        torch.testing.assert_close(param, dict(one.named_parameters())[name], rtol=1e-6, atol=1e-6, msg=name)


def test_step_checkpoints_of_groups_are_those_of_one_step_per_call(tmp_path):
    """every_n_train_steps=8 with groups of 4 in epochs of 12 batches saves after steps 8, 16 and 24,
    as one step per call does."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    saved = {}
    for steps in (1, 4):
        folder = tmp_path / f"s{steps}"
        checkpoint = ModelCheckpoint(dirpath=folder, every_n_train_steps=8, save_top_k=-1, filename="{step}")
        fit(steps, epochs=2, batches=12, trainer_args={"enable_checkpointing": True, "callbacks": [checkpoint]})
        saved[steps] = sorted(path.name for path in folder.glob("*.ckpt"))
    assert saved[4] == saved[1] == ["step=16.ckpt", "step=24.ckpt", "step=8.ckpt"]


@pytest.mark.parametrize("trainer_args, match", [
    ({"val_check_interval": 0.5}, "validate at epoch ends"),
    ({"val_check_interval": 3}, "validate at epoch ends"),
    ({"val_check_interval": 1}, "validate at epoch ends"),
    ({"val_check_interval": "00:00:00:10"}, "validate at epoch ends"),
    ({"callbacks": "every 6"}, "every_n_train_steps=6 does not fall on the ends of calls of model.steps_per_call=4 in epochs of 31"),
    ({"callbacks": "every 8"}, "every_n_train_steps=8 does not fall on the ends"),  # 31 steps an epoch: group ends drift
    ({"callbacks": "time"}, "train_time_interval does not save"),
])
def test_settings_that_would_count_groups_are_refused(trainer_args, match, tmp_path):
    import datetime

    from lightning.pytorch.callbacks import ModelCheckpoint

    if str(trainer_args.get("callbacks")).startswith("every "):
        every = int(trainer_args["callbacks"].split()[1])
        trainer_args = {"enable_checkpointing": True, "callbacks": [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every)]}
    elif trainer_args.get("callbacks") == "time":
        trainer_args = {"enable_checkpointing": True,
                        "callbacks": [ModelCheckpoint(dirpath=tmp_path, train_time_interval=datetime.timedelta(seconds=1))]}
    with pytest.raises(ConfigError, match=match) as info:
        fit(4, trainer_args=trainer_args)
    assert "\n" not in str(info.value)


def test_a_logging_cadence_groups_cannot_keep_is_warned_of():
    with pytest.warns(UserWarning, match="log_every_n_steps=10 does not fall on the ends of calls of model.steps_per_call=4"):
        fit(4, trainer_args={"log_every_n_steps": 10})
    with pytest.warns(UserWarning, match="log_every_n_steps=8 does not fall on the ends"):  # 31 steps an epoch
        fit(4, trainer_args={"log_every_n_steps": 8})


def test_a_checkpoint_inside_an_epoch_is_refused_before_training(tmp_path):
    """Lightning counts a resumed epoch's progress in calls, so a checkpoint that ends inside an
    epoch cannot resume with several steps per call: one line once the checkpoint is restored,
    before any step."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1, filename="{step}")
    fit(4, batches=32, trainer_args={"enable_checkpointing": True, "callbacks": [checkpoint]})
    path = tmp_path / "step=8.ckpt"
    resumed = make(4)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32 * BATCH, 1, 28, 28, generator=g)
    loader = DataLoader(TensorBatchDataset(x, None), batch_size=None, sampler=EpochBatches(EpochSeededSampler(len(x), 0), BATCH),
                        collate_fn=keep_batch)
    again = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    with pytest.raises(ConfigError, match=r"ends inside an epoch \(step 8 of epochs of 32\).*model.steps_per_call=1") as info:
        again.fit(resumed, loader, ckpt_path=path, weights_only=False)
    assert "\n" not in str(info.value) and again.global_step == 8  # restored, nothing trained after it

"""Resuming training from a checkpoint continues exactly; ckpt_path=last; GPU trainer without a GPU."""

import pytest
import torch

from dcgmm.app.tasks import train
from dcgmm.errors import ConfigError
from tests.conftest import compose_train, needs_mnist

pytestmark = needs_mnist

COMMON = [
    "trainer.deterministic=true", "+trainer.limit_train_batches=30", "+trainer.limit_val_batches=2",
    "test=false", "logger=csv", "seed=0", "callbacks=none",
    "+callbacks.model_checkpoint._target_=lightning.pytorch.callbacks.ModelCheckpoint",
    "+callbacks.model_checkpoint.dirpath=${paths.output_dir}/checkpoints", "+callbacks.model_checkpoint.save_last=true",
    # windows of 40 steps: one annealing window straddles the epoch boundary (and the resume)
    "model=dcgmm2", "+model.layers.1.window=40", "+model.layers.3.window=40", "model.layers.3.wait=0.0",
]


def run(tmp_path, name, *overrides):
    out = tmp_path / "train" / "runs" / name
    out.mkdir(parents=True)
    cfg = compose_train([*COMMON, *overrides], out)
    cfg.paths.log_dir = str(tmp_path)
    _, objects = train(cfg)
    return objects["model"]


def test_resume_continues_exactly(tmp_path):
    straight = run(tmp_path, "a", "trainer.max_epochs=2")
    run(tmp_path, "b1", "trainer.max_epochs=1")
    resumed = run(tmp_path, "b2", "trainer.max_epochs=2", "ckpt_path=last")  # finds b1's last.ckpt (newest)
    for (name, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), name
    for index, schedule in straight.schedules.items():
        assert schedule.state_dict() == resumed.schedules[index].state_dict()
    assert straight.schedules[1].steps == 60


def test_resume_with_groups_of_steps_continues_as_one_step_per_call(tmp_path):
    """model.steps_per_call=5 (6 groups of 5 steps an epoch), 1 + 1 epochs with a resume, ends where
    2 straight epochs of one step per call end."""
    straight = run(tmp_path, "a", "trainer.max_epochs=2")
    grouped = ["model.steps_per_call=5"]  # limit_train_batches=30 (an int) counts SGD batches: 6 groups
    run(tmp_path, "g1", "trainer.max_epochs=1", *grouped)
    resumed = run(tmp_path, "g2", "trainer.max_epochs=2", "ckpt_path=last", *grouped)
    assert not resumed.automatic_optimization and resumed.global_step == straight.global_step == 60
    for (name, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6, msg=name)
    for index, schedule in straight.schedules.items():
        assert schedule.state_dict() == resumed.schedules[index].state_dict()


def test_checkpoint_within_an_epoch_holds_the_schedules_of_its_step(tmp_path):
    """A checkpoint written after step t (every_n_train_steps) holds the parameters after t's
    update and the annealing schedules after t's loss: resuming from it replays no loss twice and
    misses none."""
    run(tmp_path, "s", "trainer.max_epochs=1", "+callbacks.model_checkpoint.every_n_train_steps=17",
        "+callbacks.model_checkpoint.save_top_k=-1")
    (path,) = (tmp_path / "train" / "runs" / "s" / "checkpoints").glob("*step=17*.ckpt")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 17
    states = checkpoint["annealing"]
    assert states[1]["steps"] == 17  # layer 1 learns from step 0 (layer 3 too: wait=0 above)
    assert states[3]["steps"] == 17


def test_ckpt_path_last_without_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="no last.ckpt of an earlier run"):
        run(tmp_path, "x", "ckpt_path=last")


def test_missing_ckpt_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        run(tmp_path, "x", "ckpt_path=/no/such.ckpt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_trainer_without_gpu(tmp_path):
    with pytest.raises(ConfigError, match="no CUDA GPU is available here; use trainer=cpu"):
        run(tmp_path, "x", "trainer=gpu")


def test_wandb_resume_by_id(tmp_path):
    import re

    first = tmp_path / "train" / "runs" / "w1"
    first.mkdir(parents=True)
    cfg = compose_train([*COMMON, "trainer.max_epochs=1", "logger=wandb"], first)
    cfg.paths.log_dir = str(tmp_path)
    train(cfg)
    (run_folder,) = (first / "wandb").glob("offline-run-*")
    run_id = re.search(r"offline-run-\d+_\d+-(\w+)$", run_folder.name).group(1)
    second = tmp_path / "train" / "runs" / "w2"
    second.mkdir(parents=True)
    cfg = compose_train([*COMMON, "trainer.max_epochs=1", "logger=wandb", f"logger.wandb.id={run_id}"], second)
    cfg.paths.log_dir = str(tmp_path)
    train(cfg)
    assert list((second / "wandb").glob(f"offline-run-*-{run_id}"))  # the same run continues
    with pytest.raises(ConfigError, match="no offline W&B run with this id"):
        run(tmp_path, "w3", "logger=wandb", "logger.wandb.id=doesnotexist")

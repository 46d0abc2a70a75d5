"""End-to-end SGD training of a GMM layer through the Lightning module, against scikit-learn's EM."""

import lightning as L
import pytest
import torch
from sklearn.mixture import GaussianMixture
from torch.utils.data import DataLoader

from dcgmm.app.config import build_model
from dcgmm.app.module import DCGMMModule
from dcgmm.core.layers import GMMLayer
from dcgmm.data import ImageDataModule
from dcgmm.data.datamodule import TensorBatchDataset, keep_batch
from dcgmm.errors import TrainingDiverged
from tests.conftest import ROOT, needs_mnist


def grid_gmm_data(n_train: int, n_test: int, side: int = 3, cell: int = 2, std: float = 0.3):
    """A known GMM: ``side x side`` components whose means are bright ``cell x cell`` squares on a
    grid of a ``(side*cell)^2``-pixel image (pairwise distance ``sqrt(2 cell^2)``), noise ``std``."""
    size = side * cell
    means = torch.zeros(side * side, size, size)
    for k in range(side * side):
        r, c = divmod(k, side)
        means[k, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = 1.0
    means = means.reshape(side * side, -1)  # (9, 36)
    g = torch.Generator().manual_seed(1)

    def draw(n):
        component = torch.randint(0, side * side, (n,), generator=g)
        return means[component] + std * torch.randn(n, means.shape[1], generator=g)

    return means, draw(n_train), draw(n_test)


def fit(module: DCGMMModule, x: torch.Tensor, epochs: int, **trainer_kwargs) -> L.Trainer:
    data = TensorBatchDataset(x.reshape(len(x), -1, 1, 1), torch.zeros(len(x), dtype=torch.long))
    loader = DataLoader(data, batch_size=100, shuffle=True, collate_fn=keep_batch)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs,
    )
    trainer.fit(module, loader)
    return trainer


def test_sgd_recovers_a_known_gmm_and_matches_em_loglik():
    """Spec init and annealing: 9 well-separated grid components, a 5x5 map of K=25.

    Measured on this code: every true mean within 0.13-0.19 of a learned one over 4 seeds,
    test log-likelihood 5-6 % below EM's after 10k steps (EM has full batches and k-means init).
    """
    true_means, x_train, x_test = grid_gmm_data(5000, 2000)
    L.seed_everything(0)
    module = DCGMMModule(layers=[{"kind": "gmm", "window": 50}], input_shape=(36, 1, 1), K=25,
                         lr=0.02, lr_min=0.01, lambda_sigma=0.5, lambda_pi=0.5)
    fit(module, x_train, epochs=200)
    layer = module.stack.top_gmm
    assert module.schedules[layer.index].sigma == pytest.approx(0.01)  # annealing ran to its end

    learned = layer.means[0].detach()
    nearest = torch.cdist(true_means, learned).min(dim=1).values
    assert nearest.max() < 0.3, f"true means not recovered: distances {nearest}"  # clusters are 2.83 apart

    ours = GMMLayer.log_likelihood(layer.log_scores(x_test.reshape(-1, 36, 1, 1))).mean().item()
    em = GaussianMixture(25, covariance_type="diag", random_state=0).fit(x_train.numpy())
    reference = em.score(x_test.numpy())
    assert abs(ours - reference) < 0.08 * abs(reference), f"SGD {ours:.3f} vs EM {reference:.3f} nats"


def test_one_step_is_plain_sgd_with_lambda_factors_and_clipping():
    """After one step: each parameter moved by -lr * lambda * grad, s clipped to sqrt(precision_max)."""
    L.seed_everything(0)
    module = DCGMMModule(layers=[{"kind": "gmm"}], input_shape=(4, 1, 1), K=4, lr=0.05,
                         lambda_mu=1.0, lambda_sigma=0.3, lambda_pi=0.2, anneal=False)
    layer = module.stack.top_gmm
    x = torch.rand(100, 4)
    before = {name: p.detach().clone() for name, p in layer.named_parameters()}
    reference = GMMLayer((4, 1, 1), K=4)
    reference.load_state_dict(layer.state_dict())
    reference.loss(reference.log_scores(x.reshape(100, 4, 1, 1))).backward()
    fit(module, x, epochs=1, limit_train_batches=1)
    factors = {"means": 1.0, "inv_std": 0.3, "mixture_logits": 0.2}
    for name, param in reference.named_parameters():
        expected = before[name] - 0.05 * factors[name] * param.grad
        if name == "inv_std":
            expected = expected.clamp(layer.inv_std_min, layer.inv_std_max)
        torch.testing.assert_close(getattr(layer, name).detach(), expected)


def test_nan_loss_stops_training_naming_layer_and_step(tmp_path):
    module = DCGMMModule(layers=[{"kind": "gmm", "window": 5}], input_shape=(4, 1, 1), K=4)
    x = torch.rand(1000, 4)
    x[730] = float("nan")  # in batch 7 of the first (unshuffled) epoch
    data = TensorBatchDataset(x.reshape(-1, 4, 1, 1), torch.zeros(1000, dtype=torch.long))
    trainer = L.Trainer(max_epochs=1, logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    with pytest.raises(TrainingDiverged, match=r"L0_gmm: loss became NaN or infinite at step 7"):
        trainer.fit(module, DataLoader(data, batch_size=100, shuffle=False, collate_fn=keep_batch))
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing saved after the divergence


@pytest.mark.skipif(not (ROOT / "data" / "cache" / "mnist.npz").exists(), reason="MNIST cache missing: run `make setup`")
def test_topology_b_short_training_improves_every_layer_and_classifies():
    """Topology B on 3,000 MNIST images for 3 epochs (90 steps), classifier reading layer 1.

    Measured on this code: layer losses 79.5 -> 62.9 and -2831 -> -3068, accuracy 0.10 -> 0.67.
    (The top layer needs thousands of steps to anneal before its responsibilities separate
    classes, so a short run reads the lower layer.)
    """
    L.seed_everything(0)
    module = build_model("dcgmm2", ["model.layers.4.input_layer=1"])
    data = ImageDataModule(name="mnist", data_dir=str(ROOT / "data"), val_size=1000)
    trainer = L.Trainer(
        max_epochs=3, limit_train_batches=30, limit_val_batches=10, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    before = trainer.validate(module, data, verbose=False)[0]
    trainer.fit(module, data)
    after = trainer.validate(module, data, verbose=False)[0]
    for layer in module.stack.learning_layers:
        key = f"val/{layer.name}/loss"
        assert after[key] < before[key], f"{key}: {before[key]:.3f} -> {after[key]:.3f}"
    assert before["val/acc"] < 0.2 and after["val/acc"] > 0.4


def test_training_speed_splits_each_epoch_into_steps_and_the_rest():
    """TrainingSpeed: one wall time per epoch (start to next start), the part inside the steps,
    their sum equal to the fit's step time, and the overhead as the median share of the later epochs."""
    import statistics
    import time

    from lightning.pytorch.callbacks import Callback

    from dcgmm.app.callbacks import TrainingSpeed

    class SlowEpochEnd(Callback):  # 50 ms outside the steps in every epoch
        def on_train_epoch_end(self, trainer, pl_module):
            time.sleep(0.05)

    _, x, _ = grid_gmm_data(400, 10)
    speed = TrainingSpeed()
    module = build_model("flat_gmm", ["model.K=4", "model.input_shape=[36,1,1]"])
    fit(module, x, epochs=3, callbacks=[speed, SlowEpochEnd()])
    assert len(speed.epoch_seconds) == len(speed.epoch_step_seconds) == 3 and speed.train_steps == 12
    assert sum(speed.epoch_step_seconds) == pytest.approx(speed.step_seconds)
    for wall, steps in zip(speed.epoch_seconds, speed.epoch_step_seconds):
        assert 0 < steps and wall >= steps + 0.05
    shares = [1 - s / w for s, w in zip(speed.epoch_step_seconds, speed.epoch_seconds)]
    assert speed.overhead == pytest.approx(statistics.median(shares[1:]))
    record = speed.as_dict()
    assert record["overhead"] == speed.overhead and record["epoch_seconds"] == speed.epoch_seconds


@needs_mnist
def test_debug_overfit_trains_on_whole_batches(train_cfg, monkeypatch):
    """debug=overfit: Lightning swaps the loaders' samplers for sequential ones; the batches must
    still be whole batches of data.batch_size (training) and data.eval_batch_size (validation)."""
    from lightning.pytorch.callbacks import Callback

    from dcgmm import tasks
    from dcgmm.app.tasks import train

    shapes = {"train": set(), "val": set()}

    class Shapes(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            shapes["train"].add((tuple(batch[0].shape), tuple(batch[1].shape)))

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            shapes["val"].add((tuple(batch[0].shape), tuple(batch[1].shape)))

    cfg = train_cfg("debug=overfit", "trainer.max_epochs=2", "test=false", "logger=none", "callbacks=none", "model=flat_gmm", "model.K=4", "data.eval_batch_size=50")
    original = tasks.instantiate_group
    monkeypatch.setattr(tasks, "instantiate_group", lambda node, what: original(node, what) + ([Shapes()] if what == "callback" else []))
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 6  # 3 batches, 2 epochs
    assert shapes["train"] == {((100, 1, 28, 28), (100,))}
    assert shapes["val"] == {((50, 1, 28, 28), (50,))}


@needs_mnist
def test_debug_limit_runs_a_few_batches_of_every_stage(train_cfg):
    """debug=limit: fractions of every loader, at least one batch each (with 500-image evaluation batches)."""
    from dcgmm.app.tasks import train

    metrics, objects = train(train_cfg("debug=limit", "trainer.max_epochs=1", "logger=none", "callbacks=none", "model=flat_gmm", "model.K=4"))
    trainer = objects["trainer"]
    assert trainer.global_step == 5 and trainer.num_val_batches == [1] and trainer.num_test_batches == [2]
    assert "test/loss" in metrics and "val/loss" in metrics

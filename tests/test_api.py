"""The scikit-learn style estimator (dcgmm.app.api): building, fitting, scores, sampling, persistence, bad input."""

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from sklearn.mixture import GaussianMixture

from dcgmm.app.api import DCGMMEstimator, known_topologies
from dcgmm.app.checkpoints import load_module
from dcgmm.app.config import build_model
from dcgmm.app.module import DCGMMModule
from dcgmm.app.tasks import sample as sample_task
from dcgmm.errors import ConfigError
from tests.conftest import CONFIG_DIR, compose_train, needs_mnist

# small models on 1x8x8 images, so that every test runs in about a second
FLAT_8 = [{"kind": "folding", "kernel_size": 8}, {"kind": "gmm", "K": 4}, {"kind": "classifier", "num_classes": 3, "lr": 0.5}]
DEEP_8 = [
    {"kind": "folding", "kernel_size": 4, "stride": 2},  # 16 x 3 x 3
    {"kind": "gmm", "K": 4},
    {"kind": "folding", "kernel_size": 2, "stride": 1},  # 16 x 2 x 2: several top positions
    {"kind": "gmm", "K": 9},
    {"kind": "classifier", "num_classes": 3},
]


def blobs(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 8x8 images: a bright left, middle or right band plus noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    x = 0.1 * torch.rand(n, 1, 8, 8, generator=g)
    for c in range(3):
        x[labels == c, :, :, 2 * c + 1 : 2 * c + 3] += 0.8
    return x.clamp(0, 1), labels


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message, message
    return message


# ------------------------------------------------------------------------------- building
def test_build_from_names_aliases_and_overrides():
    assert {"flat_gmm", "dcgmm2", "dcgmm3"} <= set(known_topologies())
    flat = DCGMMEstimator("flat_gmm", device="cpu")
    assert [layer.kind for layer in flat.stack.layers] == ["folding", "gmm", "classifier"]
    assert flat.stack.top_gmm.K == 25 and flat.input_shape == (1, 28, 28) and not flat.is_fitted
    assert DCGMMEstimator("flat_gmm", K=49, lr=0.02).stack.top_gmm.K == 49
    flat = DCGMMEstimator("flat_gmm", lr=0.02).module
    assert flat.policies[flat.stack.top_gmm.index].lr == pytest.approx(0.02)
    b = DCGMMEstimator("B", classifier=False, layer_overrides={1: {"K": 64}})
    assert [layer.kind for layer in b.stack.layers] == ["folding", "gmm", "folding", "gmm"]
    assert [g.K for g in b.stack.gmm_layers] == [64, 36]
    assert "L1_gmm" in b.summary() and "not fitted" in repr(b)
    assert [layer.kind for layer in DCGMMEstimator("A").stack.layers] == ["folding", "gmm", "classifier"]
    assert DCGMMEstimator(str(CONFIG_DIR / "model" / "dcgmm3.yaml")).stack.top_gmm.index == 5


def test_build_from_layers_and_config_mapping():
    est = DCGMMEstimator(DEEP_8, input_shape=(1, 8, 8), seed=0)
    assert [g.K for g in est.stack.gmm_layers] == [4, 9] and est.stack.top_gmm.out_shape == (9, 2, 2)
    same = DCGMMEstimator({"layers": DEEP_8, "input_shape": [1, 8, 8]}, seed=0)
    for (name, a), (_, b) in zip(est.module.named_parameters(), same.module.named_parameters()):
        assert torch.equal(a, b), name  # the seed fixes the initialisation
    state = torch.random.get_rng_state()
    DCGMMEstimator(DEEP_8, input_shape=(1, 8, 8), seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone


# ------------------------------------------------------------------------------- fitting
def test_fit_on_synthetic_images_improves_and_records_history():
    x, y = blobs(400)
    est = DCGMMEstimator(FLAT_8, input_shape=(1, 8, 8), seed=0, lambda_sigma=0.5, lambda_pi=0.5, lr=0.05)
    before = est.score(x)
    assert est.fit(x, y, epochs=6, batch_size=50, val=0.25) is est
    assert est.is_fitted and est.classifier_fitted
    assert est.score(x) > before + 10  # nats per image
    assert [h["epoch"] for h in est.history_] == list(range(6))
    assert {"train/loss", "val/loss", "train/L1_gmm/sigma"} <= set(est.history_[-1])
    assert est.history_[-1]["val/loss"] < est.history_[0]["val/loss"]
    # the three bands end up in different clusters, and the classifier learns them
    clusters = est.predict(x)
    assert len({int(clusters[y == c].mode().values) for c in range(3)}) == 3
    assert (est.predict_class(x) == y).float().mean() > 0.9
    # a second fit continues: epochs are counted on
    est.fit(x, y, epochs=1, batch_size=50)
    assert est.history_[-1]["epoch"] == 6


def test_fit_with_groups_of_steps_trains_as_one_step_per_call():
    """steps_per_call=4: the module takes the shuffled batches four at a time from the estimator's
    loader and ends where one step per call ends (7 batches of 50 an epoch, calls of 4 and 3)."""
    x, y = blobs(350)
    fitted = []
    for steps in (1, 4):
        est = DCGMMEstimator(FLAT_8, input_shape=(1, 8, 8), seed=0, lambda_sigma=0.5, lambda_pi=0.5, lr=0.05, steps_per_call=steps)
        est.fit(x, y, epochs=2, batch_size=50)
        assert est._trainer.global_step == 14 and est._trainer.num_training_batches == 7
        fitted.append(est)
    for (name, a), (_, b) in zip(fitted[0].module.named_parameters(), fitted[1].module.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
    assert fitted[0].history_[-1]["train/loss"] == pytest.approx(fitted[1].history_[-1]["train/loss"], rel=1e-6)
    fitted[1].fit(x, y, epochs=1, batch_size=50, limit_train_batches=3)  # an int limit counts SGD batches
    assert fitted[1]._trainer.global_step == 3


def test_input_forms_give_identical_scores():
    x, _ = blobs(20)
    pixels = (x * 255).round().to(torch.uint8)
    est = DCGMMEstimator(FLAT_8, input_shape=(1, 8, 8), seed=0)
    reference = est.score_samples(pixels.float() / 255)
    for form in (pixels, pixels.numpy(), pixels[:, 0], pixels.reshape(20, 64).numpy(), (pixels.numpy() / 255.0).astype(np.float64)):
        torch.testing.assert_close(est.score_samples(form), reference)
    assert est.score_samples(pixels[:0]).shape == (0,)
    assert est.predict(pixels, batch_size=3).tolist() == est.predict(pixels).tolist()  # batching does not matter


def test_fit_without_labels_leaves_the_classifier_untrained():
    x, y = blobs(200)
    est = DCGMMEstimator(FLAT_8, input_shape=(1, 8, 8), seed=0)
    weights = est.stack.classifier.weight.detach().clone()
    est.fit(x, epochs=2, batch_size=50)
    assert torch.equal(est.stack.classifier.weight, weights) and est.stack.classifier.weight.requires_grad
    assert est.is_fitted and not est.classifier_fitted
    with pytest.raises(ConfigError, match="classifier has not been trained") as err:
        est.predict_class(x)
    one_line(err)
    est.fit(x, y, epochs=1, batch_size=50)
    assert not torch.equal(est.stack.classifier.weight, weights)
    assert est.predict_class(x).shape == (200,) and est.conditional([0, 1, 2]).shape == (3, 1, 8, 8)


def test_unsupervised_fit_trains_the_gmm_layers_exactly_as_a_labelled_one():
    """A fit without labels is a real unsupervised fit: the batches carry no labels, the classifier
    has no loss (no gradient, no logged loss), and because training is layer-local the GMM layers
    follow the labelled run's trajectory bit for bit (same seed, same batches)."""
    x, y = blobs(200)
    runs = {}
    for labelled in (False, True):
        est = DCGMMEstimator(FLAT_8, input_shape=(1, 8, 8), seed=0)
        est.fit(x, y if labelled else None, epochs=2, batch_size=50)
        runs[labelled] = est
    plain, supervised = runs[False], runs[True]
    gmm = plain.stack.top_gmm.index
    for (name, a), (_, b) in zip(plain.stack.layers[gmm].named_parameters(), supervised.stack.layers[gmm].named_parameters()):
        assert torch.equal(a, b), name
    assert plain.module.schedules[gmm].state_dict() == supervised.module.schedules[gmm].state_dict()
    assert plain.stack.classifier.weight.grad is None  # never in a graph
    assert "train/L2_classifier/loss" not in plain.history_[-1]
    assert "train/L2_classifier/loss" in supervised.history_[-1]
    assert plain.history_[-1]["train/L1_gmm/loss"] == supervised.history_[-1]["train/L1_gmm/loss"]


def test_unlabelled_validation_gives_the_label_free_top_layer_metrics():
    """fit(x, val=0.1) without labels: the top-layer callback logs the loss and the label-free
    indices of the validation images, no label-based scores, and no error."""
    from dcgmm.app.callbacks import TopLayerMetrics

    x, _ = blobs(200)
    est = DCGMMEstimator(FLAT_8, input_shape=(1, 8, 8), seed=0)
    est.fit(x, epochs=1, batch_size=50, val=0.2, callbacks=[TopLayerMetrics(stages=["val"], num_classes=3)])
    last = est.history_[-1]
    assert "val/top/loss" in last and "val/cluster/dunn" in last and "val/cluster/nmi" not in last


def test_second_fit_starts_at_the_annealed_learning_rate():
    x, _ = blobs(400)
    layers = [{"kind": "folding", "kernel_size": 8}, {"kind": "gmm", "K": 4, "window": 2}]
    est = DCGMMEstimator(layers, input_shape=(1, 8, 8), seed=0, lr=0.05, lr_min=0.001)
    est.fit(x, epochs=5, batch_size=20)
    schedule = est.module.schedules[1]
    assert schedule.lr < 0.05  # annealing shrank it

    class FirstLr(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                self.lr = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}

    probe = FirstLr()
    expected = schedule.lr
    est.fit(x, epochs=1, batch_size=20, callbacks=[probe])
    assert probe.lr["L1_gmm/mu"] == pytest.approx(expected * 1.0)
    assert probe.lr["L1_gmm/sigma"] == pytest.approx(expected * 0.1)


@needs_mnist
def test_fit_on_a_datamodule():
    from dcgmm.data import ImageDataModule
    from tests.conftest import DATA_DIR

    data = ImageDataModule(name="mnist", data_dir=str(DATA_DIR), val_size=200, classes=[0, 1])
    est = DCGMMEstimator("flat_gmm", K=4, seed=0)
    est.fit(data, epochs=1, limit_train_batches=3, limit_val_batches=1)
    assert est.is_fitted and est.classifier_fitted and "val/loss" in est.history_[-1]
    with pytest.raises(ConfigError, match="drop y= and val=") as err:
        est.fit(data, val=0.1)
    one_line(err)


# ------------------------------------------------------------------------------- scores
def test_score_samples_is_the_modules_objective():
    x, y = blobs(120)
    est = DCGMMEstimator(DEEP_8, input_shape=(1, 8, 8), seed=0)
    est.fit(x, y, epochs=1, batch_size=40)
    scores = est.score_samples(x)
    stack = est.stack
    _, raw = stack.bottom_up(x, until=stack.top_gmm.index)
    torch.testing.assert_close(scores, stack.top_gmm.objective(raw[stack.top_gmm.index]).detach())
    # minus the top layer's loss that Lightning logs in validation
    from torch.utils.data import DataLoader

    from dcgmm.data.datamodule import TensorBatchDataset, keep_batch

    loader = DataLoader(TensorBatchDataset(x, y), batch_size=50, collate_fn=keep_batch)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    logged = trainer.validate(est.module, loader, verbose=False)[0]
    assert logged[f"val/{stack.top_gmm.name}/loss"] == pytest.approx(-scores.mean().item(), rel=1e-5)


def test_log_likelihood_of_a_flat_gmm_equals_sklearn():
    torch.manual_seed(0)
    est = DCGMMEstimator(FLAT_8[:2], input_shape=(1, 8, 8), seed=0)
    layer = est.stack.top_gmm
    with torch.no_grad():  # arbitrary parameters, as after training
        layer.mixture_logits.copy_(torch.randn(1, 4))
        layer.means.copy_(torch.rand(1, 4, 64))
        layer.inv_std.copy_(0.5 + 3 * torch.rand(1, 4, 64))
    x, _ = blobs(50)
    ours = est.log_likelihood(x)

    gm = GaussianMixture(n_components=4, covariance_type="diag")
    gm.weights_ = layer.weights[0].detach().double().numpy()
    gm.means_ = layer.means[0].detach().double().numpy()
    gm.precisions_cholesky_ = layer.inv_std[0].detach().double().numpy()
    gm.covariances_ = 1.0 / gm.precisions_cholesky_**2
    gm.converged_, gm.n_iter_, gm.lower_bound_ = True, 1, 0.0
    reference = gm.score_samples(x.reshape(50, 64).double().numpy())
    np.testing.assert_allclose(ours.double().numpy(), reference, rtol=1e-5, atol=1e-3)
    # dequantised bits/dim is reproducible by seed
    assert torch.equal(est.bits_per_dim(x, seed=1), est.bits_per_dim(x, seed=1))


def test_predict_is_the_argmax_of_responsibilities():
    x, y = blobs(90)
    flat = DCGMMEstimator(FLAT_8, input_shape=(1, 8, 8), seed=0).fit(x, y, epochs=2, batch_size=30)
    scores = flat.stack.top_gmm.log_scores(flat.stack.layers[0](x)).detach()  # (N, 1, K)
    assert torch.equal(flat.predict(x), torch.softmax(scores, -1)[:, 0].argmax(-1))
    assert torch.equal(flat.predict(x), flat.predict_proba(x).argmax(-1))
    deep = DCGMMEstimator(DEEP_8, input_shape=(1, 8, 8), seed=0)
    maps = deep.responsibilities(x)  # (N, 9, 2, 2): several positions
    assert maps.shape == (90, 9, 2, 2)
    assert torch.equal(deep.predict(x), maps.mean(dim=(2, 3)).argmax(-1))
    torch.testing.assert_close(deep.predict_proba(x).sum(-1), torch.ones(90))


# ------------------------------------------------------------------------------- persistence
def test_save_load_round_trip_gives_identical_scores(tmp_path):
    x, y = blobs(120)
    est = DCGMMEstimator(DEEP_8, input_shape=(1, 8, 8), seed=0).fit(x, y, epochs=2, batch_size=40)
    path = est.save(tmp_path / "sub" / "model.ckpt")
    loaded = DCGMMEstimator.load(path, device="cpu")
    assert loaded.is_fitted and loaded.classifier_fitted and loaded.topology == "custom"
    assert torch.equal(loaded.score_samples(x), est.score_samples(x))
    assert torch.equal(loaded.predict_class(x), est.predict_class(x))
    assert torch.equal(loaded.sample(5, seed=3), est.sample(5, seed=3))
    for index, schedule in est.module.schedules.items():
        assert loaded.module.schedules[index].state_dict() == schedule.state_dict()
    module = load_module(path)  # what evaluate.py and sample.py read
    assert torch.equal(module.stack.top_gmm.means, est.stack.top_gmm.means)
    assert isinstance(DCGMMModule.load_from_checkpoint(path, weights_only=False), DCGMMModule)
    # an unfitted model round-trips as unfitted
    fresh = DCGMMEstimator("flat_gmm", seed=0)
    again = DCGMMEstimator.load(fresh.save(tmp_path / "fresh.ckpt"))
    assert not again.is_fitted and again.topology == "flat_gmm"


def test_load_reads_a_train_py_checkpoint(tmp_path):
    module = build_model("flat_gmm", ["model.K=9"])  # as train.py builds it (optimizer partial in the hyper-parameters)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    est = DCGMMEstimator.load(tmp_path / "last.ckpt")
    assert est.is_fitted and est.classifier_fitted and est.stack.top_gmm.K == 9
    images = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(est.score_samples(images), module.stack.top_gmm.objective(
        module.stack.bottom_up(images, until=1)[1][1]).detach())


def test_sample_py_reads_a_saved_estimator(tmp_path):
    path = DCGMMEstimator("flat_gmm", K=9, seed=0).save(tmp_path / "m.ckpt")
    cfg = compose_train([f"ckpt_path={path}", "n=4", "logger=none"], tmp_path, "sample.yaml")
    assert sample_task(cfg)["images"].shape == (4, 1, 28, 28)


@needs_mnist
def test_evaluate_py_reads_a_saved_estimator(tmp_path):
    from dcgmm.app.evaluation import evaluate

    path = DCGMMEstimator("flat_gmm", K=9, seed=0).save(tmp_path / "m.ckpt")
    cfg = compose_train([f"ckpt_path={path}", "+trainer.limit_test_batches=1"], tmp_path, "evaluate.yaml")
    metrics, _ = evaluate(cfg)
    assert "test/loglik" in metrics and "test/bpd" in metrics


# ------------------------------------------------------------------------------- sampling
def test_samples_shapes_ranges_and_seeds():
    x, y = blobs(120)
    est = DCGMMEstimator(DEEP_8, input_shape=(1, 8, 8), seed=0).fit(x, y, epochs=1, batch_size=40)
    images = est.sample(7, seed=1)
    assert images.shape == (7, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, est.sample(7, seed=1)) and not torch.equal(images, est.sample(7, seed=2))
    assert est.sample(3, layer=1, top_s=2, divisor=10).shape == (3, 1, 8, 8)  # from the lower gmm layer
    sharp = est.sample(3, seed=1, sharpening={"iterations": 5, "rate": 0.1, "reconstruction": 0.05})
    assert sharp.shape == (3, 1, 8, 8) and not torch.equal(sharp, est.sample(3, seed=1))
    assert est.conditional([0, 2, 2], seed=0).shape == (3, 1, 8, 8)
    assert est.variants(x[:4], layer=1).shape == (4, 1, 8, 8)
    assert est.prototypes(1).shape == (4, 1, 4, 4)  # patch means of the layer above the pixels
    assert est.prototypes().shape == (9, 1, 8, 8)
    assert est.variance_images(1).shape == (4, 1, 8, 8)  # on the pixels
    assert est.variance_images().shape == (9, 1, 3, 3)  # on the map of the folding below the top layer


def test_inpainting_keeps_known_pixels_and_fills_the_mask():
    x, _ = blobs(6)
    est = DCGMMEstimator(DEEP_8, input_shape=(1, 8, 8), seed=0)
    filled = est.inpaint(x, "right_half", seed=0)
    assert torch.equal(filled[..., :4], x[..., :4])
    missing = torch.zeros(8, 8, dtype=torch.bool)
    missing[2:5, 2:5] = True
    boxed = est.inpaint(x, missing, seed=0)
    assert torch.equal(boxed[..., ~missing], x[..., ~missing])
    assert not torch.equal(boxed[..., missing], x[..., missing])
    assert torch.equal(est.inpaint(x, missing.numpy().astype(int), seed=0), boxed)  # 0/1 arrays work too


# ------------------------------------------------------------------------------- bad input
def test_unknown_topology_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        DCGMMEstimator("dcgmm9")
    message = one_line(err)
    assert "unknown topology 'dcgmm9'" in message and "flat_gmm" in message and "dcgmm2" in message


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(topology="flat_gmm", Kay=3), "unknown model option"),
        (dict(topology="flat_gmm", K=10), "perfect square"),
        (dict(topology="dcgmm2", input_shape=(1, 8, 8)), "larger than its input"),
        (dict(topology="flat_gmm", input_shape=(28, 28)), r"must be \[channels, height, width\]"),
        (dict(topology="flat_gmm", input_shape="1x28x28"), "input_shape="),
        (dict(topology="flat_gmm", layer_overrides={7: {"K": 4}}), "layer 7 does not exist"),
        (dict(topology=[{"kind": "gmm"}]), "K is not set"),
        (dict(topology=[]), "non-empty list"),
        (dict(topology=42), "must be a config name"),
        (dict(topology="flat_gmm", device="tpu"), "not a torch device"),
        (dict(topology="flat_gmm", seed=1.5), "seed"),
        (dict(topology="/no/such/model.yaml"), "does not exist"),
    ],
)
def test_bad_construction_is_a_one_line_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        DCGMMEstimator(**kwargs)
    one_line(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is available here")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="no CUDA GPU") as err:
        DCGMMEstimator("flat_gmm", device="cuda")
    one_line(err)


@pytest.fixture(scope="module")
def small():
    x, y = blobs(60)
    return DCGMMEstimator(DEEP_8, input_shape=(1, 8, 8), seed=0), x, y


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda e, x, y: e.score_samples(torch.rand(5, 1, 28, 28)), r"shape \(5, 1, 28, 28\); the model takes images of shape \(N, 1, 8, 8\)"),
        (lambda e, x, y: e.score_samples(torch.rand(5, 63)), "shape"),
        (lambda e, x, y: e.score_samples(x * 255), r"outside \[0, 1\]; pass uint8 pixels"),
        (lambda e, x, y: e.score_samples(torch.full((2, 1, 8, 8), float("nan"))), "NaN"),
        (lambda e, x, y: e.score_samples(np.array([["a"] * 64])), "dtype"),
        (lambda e, x, y: e.score_samples(np.arange(64 * 2).reshape(2, 64)), "integer values"),
        (lambda e, x, y: e.fit(x, y[:10]), r"one class id per image, shape \(60,\)"),
        (lambda e, x, y: e.fit(x, y + 5), "classes 0..2"),
        (lambda e, x, y: e.fit(x, y * 0.5), "integer class ids"),
        (lambda e, x, y: e.fit(x, epochs=0), "epochs=0"),
        (lambda e, x, y: e.fit(x, batch_size=0), "batch_size=0"),
        (lambda e, x, y: e.fit(x, val=1.5), "val=1.5"),
        (lambda e, x, y: e.fit(x[:0]), "no images"),
        (lambda e, x, y: e.log_likelihood(x), "pixel-density model"),
        (lambda e, x, y: e.bits_per_dim(x), "pixel-density model"),
        (lambda e, x, y: e.predict_class(x), "classifier has not been trained"),
        (lambda e, x, y: e.conditional([0]), "classifier has not been trained"),
        (lambda e, x, y: e.prototypes(2), "layer=2 is not a gmm layer; gmm layers"),
        (lambda e, x, y: e.sample(0), "n=0"),
        (lambda e, x, y: e.sample(2, top_s=99), "top_s=99"),
        (lambda e, x, y: e.sample(2, sharpening={"speed": 1}), "unknown keys"),
        (lambda e, x, y: e.sample(2, colour=True), "unknown sampling option"),
        (lambda e, x, y: e.inpaint(x, "middle"), "mask='middle' is unknown"),
        (lambda e, x, y: e.inpaint(x, torch.ones(3, 3, dtype=torch.bool)), r"mask has shape \(3, 3\)"),
        (lambda e, x, y: e.inpaint(x, torch.full((8, 8), 0.5)), "boolean"),
    ],
)
def test_bad_calls_are_one_line_config_errors(small, call, match):
    est, x, y = small
    with pytest.raises(ConfigError, match=match) as err:
        call(est, x, y)
    one_line(err)
    assert not est.is_fitted  # nothing was trained by a refused call


def test_no_classifier_is_named_in_the_error():
    est = DCGMMEstimator(FLAT_8[:2], input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="needs a classifier layer") as err:
        est.predict_class(torch.rand(2, 1, 8, 8))
    one_line(err)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fit_and_scores_match_cpu():
    x, y = blobs(200)
    gpu = DCGMMEstimator(DEEP_8, input_shape=(1, 8, 8), seed=0, device="cuda").fit(x, y, epochs=2, batch_size=50)
    cpu = DCGMMEstimator(DEEP_8, input_shape=(1, 8, 8), seed=0, device="cpu").fit(x, y, epochs=2, batch_size=50)
    assert next(gpu.module.parameters()).device.type == "cuda"
    torch.testing.assert_close(gpu.score_samples(x), cpu.score_samples(x), rtol=1e-3, atol=1e-3)
    assert gpu.sample(4, seed=0).device.type == "cpu" and gpu.predict_class(x).shape == (200,)


def test_fit_on_arrays_feeds_the_batches_train_py_s_data_modules_would():
    """The estimator's loaders are the data modules' (dcgmm.data.ArrayDataModule): the validation
    split of ImageDataModule (split_indices) and the training order of (seed, epoch), and a second
    fit goes on with the next seed."""
    from dcgmm.data.datamodule import EpochSeededSampler, split_indices

    class Batches(Callback):
        def __init__(self):
            self.seen, self.val = [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(batch[0].clone())

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            self.val.append(batch[0].clone())

    x, y = blobs(60, seed=5)
    est = DCGMMEstimator(FLAT_8, input_shape=(1, 8, 8), seed=3)
    probe = Batches()
    est.fit(x, y, epochs=2, batch_size=20, val=12, callbacks=[probe])
    train, held = split_indices(60, 12, 3)
    assert len(probe.val) == 2 and all(torch.equal(batch, x[torch.from_numpy(held)]) for batch in probe.val)  # one batch an epoch
    kept = x[torch.from_numpy(train)]
    expected = []
    for seed, epoch in ((3, 0), (3, 1), (5, 0)):  # the second fit: seed + the 2 epochs done before
        order = EpochSeededSampler(48, seed)
        order.set_epoch(epoch)
        expected += list(kept[order.order()].split(20))
    est.fit(x, y, epochs=1, batch_size=20, val=12, callbacks=[probe])
    assert len(probe.seen) == len(expected) == 9
    for got, want in zip(probe.seen, expected):
        assert torch.equal(got, want)


def test_a_standalone_topology_takes_overrides_as_the_command_line_does(tmp_path):
    """A layer list, a mapping or a YAML file with override strings is composed by Hydra as
    ``model=<it> OVERRIDES`` (the grammar and errors of the command line), so the same overrides on
    a shipped topology's own layers give the same model as on its name."""
    import yaml

    from dcgmm.app.config import load_topology

    overrides = ["model.layers.1.K=16", "lr=0.02", "model.layers.3.wait=0.25"]
    by_name = DCGMMEstimator("dcgmm2", overrides=overrides, seed=0).module
    as_mapping = DCGMMEstimator(load_topology("dcgmm2"), overrides=overrides, seed=0).module
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(load_topology("dcgmm2")))
    from_file = DCGMMEstimator(str(path), overrides=overrides, seed=0).module
    for module in (as_mapping, from_file):
        assert dict(module.hparams) == dict(by_name.hparams)
        assert [g.K for g in module.stack.gmm_layers] == [16, 36] and module.policies[3].wait == 0.25
        for (name, want), got in zip(by_name.named_parameters(), module.parameters()):
            assert torch.equal(got, want), name
    layers = [{"kind": "folding", "kernel_size": 8}, {"kind": "gmm", "K": 4}]
    est = DCGMMEstimator(layers, input_shape=(1, 8, 8), overrides=["layers.1.K=9", "+layers.1.lr=1e-1"])  # Hydra's grammar: 1e-1 a float
    assert est.stack.top_gmm.K == 9 and est.module.policies[1].lr == 0.1
    with pytest.raises(ConfigError, match=r"Could not override 'model.layers.1.Q'.*needs a leading \+") as err:
        DCGMMEstimator(layers, input_shape=(1, 8, 8), overrides=["model.layers.1.Q=3"])
    one_line(err)
    from hydra.core.config_store import ConfigStore

    assert not ConfigStore.instance().repo.get("model")  # no option left behind for later compositions


def test_an_array_data_module_given_to_fit_trains_the_classifier_and_refuses_two_validation_sources():
    from dcgmm.data import ArrayDataModule, DataError

    x, y = blobs(60, seed=2)
    est = DCGMMEstimator(FLAT_8, input_shape=(1, 8, 8), seed=0)
    est.fit(ArrayDataModule(x, y, batch_size=20), epochs=1)
    assert est.classifier_fitted and est.predict_class(x[:5]).shape == (5,)
    unlabelled = DCGMMEstimator(FLAT_8, input_shape=(1, 8, 8), seed=0).fit(ArrayDataModule(x, batch_size=20), epochs=1)
    assert unlabelled.is_fitted and not unlabelled.classifier_fitted
    with pytest.raises(DataError, match="not both"):
        ArrayDataModule(x, y, val_size=10, val=(x[:5], y[:5]))


def test_fit_without_logger_or_validation_warns_of_neither():
    """The estimator trains without a logger and, without val=, without a validation loop: Lightning
    must not warn that metrics go to no logger or that a validation loader is empty."""
    import warnings

    x, y = blobs(60, seed=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DCGMMEstimator(FLAT_8, input_shape=(1, 8, 8), seed=0).fit(x, y, epochs=1, batch_size=20)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "no logger configured" in m or "across ranks is zero" in m], messages

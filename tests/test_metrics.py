"""Evaluation metrics: clustering scores and AUROC against scikit-learn/scipy, the outlier sign
convention on a toy case, and the scikit-learn EM baseline."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, roc_auc_score
from sklearn.metrics.cluster import contingency_matrix

from dcgmm.app.tasks import train
from dcgmm.core.metrics import ClusteringScores, auroc_metric, clustering_scores, outlier_auroc
from dcgmm.core.scoring import cluster_ids, typicality
from tests.conftest import DATA_DIR, needs_mnist


def hungarian_reference(labels, clusters) -> float:
    table = contingency_matrix(labels, clusters)  # (classes present, clusters present)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return table[rows, cols].sum() / len(labels)


def accumulate(metric: ClusteringScores, clusters: np.ndarray, labels: np.ndarray, pieces: int) -> dict:
    for part_c, part_l in zip(np.array_split(clusters, pieces), np.array_split(labels, pieces)):
        metric.update(torch.from_numpy(part_c), torch.from_numpy(part_l))
    return {k: float(v) for k, v in metric.compute().items()}


@pytest.mark.parametrize("seed", range(5))
def test_clustering_scores_match_sklearn_and_scipy(seed):
    rng = np.random.default_rng(seed)
    n, k = 500 + 37 * seed, 10
    labels = rng.integers(0, 10, n)
    # partly informative clusters: a noisy permutation of the labels
    clusters = np.where(rng.random(n) < 0.6, rng.permutation(10)[labels], rng.integers(0, k, n))
    scores = accumulate(ClusteringScores(num_clusters=k, num_classes=10), clusters, labels, pieces=4)
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters), abs=1e-12)
    assert scores["ari"] == pytest.approx(adjusted_rand_score(labels, clusters), abs=1e-12)
    assert scores["hungarian_acc"] == pytest.approx(hungarian_reference(labels, clusters), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_more_clusters_than_classes_reports_no_one_to_one_accuracy(seed):
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(1, 10, 400)  # class 0 absent (held out): 9 classes present
    clusters = rng.integers(0, 25, 400)
    scores = accumulate(ClusteringScores(num_clusters=25, num_classes=10), clusters, labels, pieces=3)
    assert "hungarian_acc" not in scores
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters), abs=1e-12)
    assert scores["ari"] == pytest.approx(adjusted_rand_score(labels, clusters), abs=1e-12)
    # K = number of classes present (9, class 0 absent): the one-to-one accuracy is reported
    nine = accumulate(ClusteringScores(num_clusters=9, num_classes=10), clusters % 9, labels, pieces=2)
    assert nine["hungarian_acc"] == pytest.approx(hungarian_reference(labels, clusters % 9), abs=1e-12)


def test_purity_hand_computed():
    # cluster 0: classes 0,0,0,1 -> 3 of 4; cluster 1: classes 1,1,2 -> 2 of 3; cluster 2: 2,2,2 -> 3
    clusters = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    metric = ClusteringScores(num_clusters=3, num_classes=3)
    metric.update(clusters[:6], labels[:6])
    metric.update(clusters[6:], labels[6:])
    scores = metric.compute()
    assert float(scores["purity"]) == pytest.approx(8 / 10)
    assert float(scores["hungarian_acc"]) == pytest.approx(8 / 10)  # 0->0, 1->1, 2->2


def test_degenerate_labelings_follow_sklearn():
    one = np.zeros(20, dtype=int)
    split = np.arange(20) % 4
    for labels, clusters in [(one, one), (one, split), (split, one), (split, split)]:
        scores = clustering_scores(contingency_matrix(clusters, labels))
        assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters))
        assert scores["ari"] == pytest.approx(adjusted_rand_score(labels, clusters))


def test_clustering_scores_reject_ids_out_of_range():
    metric = ClusteringScores(num_clusters=4, num_classes=10)
    with pytest.raises(ValueError, match="cluster ids"):
        metric.update(torch.tensor([0, 4]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="class ids"):
        metric.update(torch.tensor([0, 3]), torch.tensor([1, 12]))


@pytest.mark.parametrize("seed", range(3))
def test_auroc_equals_sklearn_on_raw_scores(seed):
    rng = np.random.default_rng(seed)
    # log-likelihood-sized scores (a sigmoid would saturate them into ties) with exact ties
    inliers = np.round(rng.normal(-700, 40, 600))
    outliers = np.round(rng.normal(-760, 60, 150))
    expected = roc_auc_score(np.r_[np.zeros(600), np.ones(150)], -np.r_[inliers, outliers])
    assert outlier_auroc(inliers, outliers) == pytest.approx(expected, abs=1e-6)
    metric = auroc_metric()  # accumulated over batches, as the callback does
    for part in np.array_split(np.arange(750), 5):
        scores = np.r_[inliers, outliers][part]
        metric.update(torch.from_numpy(-scores), torch.from_numpy((part >= 600).astype(np.int64)))
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)


def test_auroc_sign_convention():
    typical, atypical = np.array([-10.0, -11.0, -12.0]), np.array([-50.0, -60.0])
    assert outlier_auroc(typical, atypical) == 1.0  # outliers have the lower typicality
    assert outlier_auroc(atypical, typical) == 0.0


def test_cluster_ids_from_top_scores():
    scores = torch.tensor([[[0.0, 3.0, 1.0]], [[5.0, 1.0, 0.0]]])  # (N=2, P=1, K=3)
    assert cluster_ids(scores).tolist() == [1, 0]
    # several positions: the component with the largest mean responsibility
    multi = torch.tensor([[[9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 9.0, 0.0]]])
    assert cluster_ids(multi).tolist() == [1]


# Measured on MNIST: a flat GMM (K=9, also K=25) trained 1 epoch on 3000 training images gives
# AUROC 1.0 for the 10000 inverted test images (1 - x) against the 10000 test images: every
# inverted image scores below every test image (K=9: at most -4440 against at least -1255 nats).
INVERTED_AUROC_BOUND = 0.999


@needs_mnist
def test_inverted_images_are_obvious_outliers(train_cfg):
    cfg = train_cfg(
        "model=flat_gmm", "model.K=9", "trainer.max_epochs=1", "+trainer.limit_train_batches=30", "data.val_size=0",
        "test=false", "callbacks=none", "logger=csv", "++trainer.enable_checkpointing=false",
    )
    _, objects = train(cfg)
    stack = objects["model"].stack.eval()
    datamodule = objects["datamodule"]
    datamodule.setup("test")
    images = datamodule.dataset("test").x
    inliers, outliers = typicality(stack, images), typicality(stack, 1.0 - images)
    assert inliers.mean() > outliers.mean()  # higher objective = more typical
    assert outlier_auroc(inliers, outliers) > INVERTED_AUROC_BOUND


@needs_mnist
def test_em_baseline_reports_clustering_density_and_outliers():
    from dcgmm.results.baselines import em_baseline

    result = em_baseline("mnist", K=9, data_dir=DATA_DIR, held_out=0, n_train=1000, max_iter=5)
    assert result["train_images"] == 1000 and result["outliers"] == 980  # MNIST has 980 test zeros
    assert result["test_images"] == 10000 - 980
    assert set(result["cluster"]) == {"purity", "nmi", "ari", "hungarian_acc", "dunn", "davies_bouldin"}  # K = 9 classes present
    assert 0.0 <= result["auroc"] <= 1.0
    assert result["auroc"] == pytest.approx(outlier_auroc(result["inlier_scores"], result["outlier_scores"]))
    assert result["loglik"] == pytest.approx(float(np.mean(result["inlier_scores"])))
    assert result["bpd"] > 0


def test_internal_indices_by_hand_and_against_sklearn():
    """Two clusters on a line: {0, 1} and {4, 6}. Dunn = nearest pair across (1, 4) = 3 over the
    widest pair within (4, 6) = 2: 1.5. Davies-Bouldin: centroids 0.5 and 5, spreads 0.5 and 1:
    (0.5 + 1) / 4.5 = 1/3 for both clusters."""
    from sklearn.metrics import davies_bouldin_score

    from dcgmm.core.metrics import internal_indices

    points = torch.tensor([[0.0], [1.0], [4.0], [6.0]])
    result = internal_indices(points, torch.tensor([7, 7, 2, 2]))
    assert result["dunn"] == pytest.approx(1.5) and result["davies_bouldin"] == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)) + np.repeat(np.eye(5)[:3] * 4, 100, axis=0)
    labels = rng.integers(0, 4, 300)
    got = internal_indices(torch.from_numpy(x), torch.from_numpy(labels), chunk=64)  # chunked distances
    assert got["davies_bouldin"] == pytest.approx(davies_bouldin_score(x, labels), rel=1e-9)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    same = labels[:, None] == labels[None]
    assert got["dunn"] == pytest.approx(d[~same].min() / d[same].max(), rel=1e-9)
    assert internal_indices(points, torch.zeros(4)) == {"dunn": None, "davies_bouldin": None}


@needs_mnist
def test_evaluation_callbacks_read_the_test_steps_pass_and_agree_with_a_pass_of_their_own(train_cfg, monkeypatch):
    """One bottom-up pass per test batch: with the clustering and the outlier callbacks on, neither
    runs the stack on the test images again (their own scoring functions would raise here), and
    what the step returns equals a separate pass (top-layer scores, every layer's typicality)."""
    import dcgmm.app.callbacks.outliers as outliers_cb
    import dcgmm.app.callbacks.top_layer as top_layer_cb
    from dcgmm.core.scoring import layer_typicalities, top_scores

    cfg = train_cfg("model=dcgmm2", "++trainer.fast_dev_run=true", "logger=csv", "callbacks=[default,top_layer]",
                    "+outlier=default", "outlier.extra=[]")

    def second_pass(*args, **kwargs):
        raise AssertionError("an evaluation callback ran the stack on the test batch again")

    monkeypatch.setattr(top_layer_cb.EvalOutputs, "of", classmethod(second_pass))
    monkeypatch.setattr(outliers_cb, "layer_typicalities", second_pass)
    metrics, objects = train(cfg)
    assert "test/cluster/purity" in metrics and "test/auroc" in metrics

    module = objects["model"].eval()
    x, y = next(iter(objects["datamodule"].test_dataloader()))
    with torch.no_grad():
        out = module.test_step((x, y), 0)
        expected = layer_typicalities(module.stack, x)
        torch.testing.assert_close(out.top_scores, top_scores(module.stack, x))
    assert set(out.typicalities) == set(expected) and len(expected) == 4  # L1, L3, top, sum
    for key, value in expected.items():
        torch.testing.assert_close(out.typicalities[key], value)
    assert torch.equal(out.labels, y)


def test_predict_step_outputs_match_a_hand_computed_mixture():
    """trainer.predict returns one EvalOutputs per batch; its log-likelihood, typicality, cluster
    ids and component/class probabilities of a flat GMM (random parameters) agree with the mixture
    density computed independently with scipy, and with the classifier's softmax by hand."""
    import lightning as L
    from scipy.special import logsumexp, softmax
    from scipy.stats import norm

    from dcgmm.app.module import DCGMMModule
    from dcgmm.core.scoring import EvalOutputs

    torch.manual_seed(0)
    module = DCGMMModule(layers=[{"kind": "folding", "kernel_size": 3}, {"kind": "gmm", "K": 4, "loss": "logsumexp"},
                                 {"kind": "classifier", "num_classes": 3}], input_shape=(1, 3, 3))
    gmm, head = module.stack.layers[1], module.stack.layers[2]
    with torch.no_grad():
        gmm.means.normal_(0.5, 0.3)
        gmm.inv_std.uniform_(1.0, 4.0)
        gmm.mixture_logits.normal_()
    x = torch.rand(30, 1, 3, 3)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=8))  # [images] batches
    assert all(isinstance(b, EvalOutputs) for b in batches)

    def cat(name):
        return torch.cat([getattr(b, name) for b in batches]).double().numpy()

    xs = x.reshape(30, 9).double().numpy()
    mu, std = gmm.means[0].detach().double().numpy(), 1 / gmm.inv_std[0].detach().double().numpy()
    logpi = torch.log_softmax(gmm.mixture_logits[0].detach().double(), -1).numpy()
    joint = logpi + norm.logpdf(xs[:, None, :], mu[None], std[None]).sum(-1)  # (N, K)
    np.testing.assert_allclose(cat("top_log_likelihood"), logsumexp(joint, axis=1), rtol=1e-5)
    np.testing.assert_allclose(cat("typicality"), logsumexp(joint, axis=1), rtol=1e-5)  # logsumexp objective, one position
    np.testing.assert_allclose(cat("component_probabilities"), softmax(joint, axis=1), atol=1e-5)
    assert cat("clusters").tolist() == joint.argmax(1).tolist()
    gamma = softmax(joint, axis=1)
    logits = gamma @ head.weight.detach().double().numpy().T + head.bias.detach().double().numpy()
    np.testing.assert_allclose(cat("class_probabilities"), softmax(logits, axis=1), atol=1e-5)


def test_weighted_mean_matches_numpy_and_torchmetrics_over_unequal_batches():
    """Batch means counted as their batch sizes (a short last batch), per-image values, boolean
    values and tensor weights: the same means as numpy and torchmetrics' MeanMetric."""
    from torchmetrics import MeanMetric

    from dcgmm.core.metrics import WeightedMean

    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, generator=g) * 3 + 1 for n in (100, 100, 37)]
    everything = torch.cat(batches).double().numpy()
    of_means, reference, per_image, correct = WeightedMean(), MeanMetric(), WeightedMean(), WeightedMean()
    assert torch.isnan(of_means.compute())  # nothing seen yet
    for b in batches:
        of_means.update(b.mean(), weight=len(b))
        reference.update(b.mean(), weight=len(b))
        per_image.update(b)
        correct.update(b > 1.0)
    assert of_means.compute().item() == pytest.approx(everything.mean(), rel=1e-5)
    assert of_means.compute().item() == pytest.approx(reference.compute().item(), rel=1e-6)
    assert per_image.compute().item() == pytest.approx(everything.mean(), rel=1e-5)
    assert correct.compute().item() == pytest.approx(float((everything > 1.0).mean()), rel=1e-6)
    weights = torch.rand(237, generator=g)
    weighted = WeightedMean()
    weighted.update(torch.cat(batches), weight=weights)
    assert weighted.compute().item() == pytest.approx(np.average(everything, weights=weights.double().numpy()), rel=1e-5)
    weighted.reset()
    assert torch.isnan(weighted.compute())
    numbers = WeightedMean()  # Python numbers, alone and with tensors
    numbers.update(2.0, weight=3)
    numbers.update(torch.tensor([4.0, 6.0]), weight=0.5)
    numbers.update(1.0)
    assert numbers.compute().item() == pytest.approx(np.average([2.0, 4.0, 6.0, 1.0], weights=[3, 0.5, 0.5, 1]))
    number_weighted = WeightedMean()  # a Python number with tensor weights: the number once per weight
    number_weighted.update(5.0, weight=torch.tensor([1.0, 2.0]))
    number_weighted.update(torch.tensor([1.0]), weight=torch.tensor([3.0]))
    assert number_weighted.compute().item() == pytest.approx(np.average([5.0, 5.0, 1.0], weights=[1, 2, 3]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_weighted_mean_updates_do_not_synchronise_with_the_gpu():
    """Batch means with a batch-size weight, per-image values and booleans on the GPU: no update
    waits for the device (torch's sync debug mode turns a synchronisation into an error)."""
    from dcgmm.core.metrics import WeightedMean

    mean = WeightedMean().to("cuda")
    values = torch.rand(100, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mean.update(values.mean(), weight=100)
        mean.update(values)
        mean.update(values > 0.5)
        mean.update(values, weight=torch.ones(100, device="cuda"))
        mean.update(0.5, weight=torch.ones(100, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = (values.mean() * 100 + values.sum() + (values > 0.5).sum() + values.sum() + 0.5 * 100) / 500
    assert mean.compute().item() == pytest.approx(expected.item(), rel=1e-5)


def test_weighted_mean_lets_a_nan_through():
    """A NaN makes the mean NaN (torchmetrics' MeanMetric drops it with a warning)."""
    from dcgmm.core.metrics import WeightedMean

    mean = WeightedMean()
    mean.update(torch.tensor([1.0, 2.0]))
    mean.update(torch.tensor(float("nan")), weight=5)
    assert torch.isnan(mean.compute())


def test_validation_metrics_equal_one_pass_over_all_images():
    """trainer.validate over batches of 100, 100 and 37 images logs the same accuracy (against
    scikit-learn), log-likelihood, bound and loss as one pass over all 237 images at once."""
    import lightning as L
    from sklearn.metrics import accuracy_score

    from dcgmm.app.config import build_model
    from dcgmm.core.scoring import EvalOutputs
    from dcgmm.data.datamodule import TensorBatchDataset, keep_batch

    torch.manual_seed(0)
    module = build_model("dcgmm2", [])
    with torch.no_grad():
        for p in module.stack.classifier.parameters():
            p.normal_()  # distinct logits, so that the predicted classes differ between images
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (237, 1, 28, 28), generator=g).float() / 255
    y = torch.randint(0, 10, (237,), generator=g)
    loader = torch.utils.data.DataLoader(TensorBatchDataset(x, y), batch_size=100, collate_fn=keep_batch)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(module, loader, verbose=False)[0]

    module.eval()
    with torch.no_grad():
        _, raw = module.stack.bottom_up(x)
        outputs = EvalOutputs(module.stack, raw, y)
        losses = module.stack.losses(raw, y)
        predicted = raw[module.stack.classifier.index].flatten(1).argmax(dim=1)
    accuracy = accuracy_score(y.numpy(), predicted.numpy())
    assert 0.02 < accuracy < 0.5  # neither all right nor one class for all
    assert logged["val/acc"] == pytest.approx(accuracy, abs=1e-6)
    assert logged["val/loglik"] == pytest.approx(outputs.top_log_likelihood.mean().item(), rel=1e-5)
    assert logged["val/bound"] == pytest.approx(module.stack.top_gmm.max_component_bound(outputs.top_scores).mean().item(), rel=1e-5)
    gmm_loss = sum(losses[layer.index] for layer in module.stack.gmm_layers).item()
    assert logged["val/loss"] == pytest.approx(gmm_loss, rel=1e-5)


def test_bits_per_dim_is_scipy_s_mixture_density_of_the_dequantised_pixels():
    """dcgmm.core.scoring.bits_per_dim of a flat GMM equals 8 - log p(x') / (D ln 2), with log p the
    diagonal mixture's density of the dequantised pixels x' = (u8 + u) / 256 computed by scipy
    (the same uniform noise u, drawn after seeding torch alike)."""
    from scipy.special import logsumexp
    from scipy.stats import norm

    from dcgmm.app.module import DCGMMModule
    from dcgmm.core.scoring import bits_per_dim

    torch.manual_seed(3)
    module = DCGMMModule(layers=[{"kind": "folding", "kernel_size": 4}, {"kind": "gmm", "K": 3, "anneal": False}], input_shape=(1, 4, 4))
    gmm = module.stack.top_gmm
    with torch.no_grad():
        gmm.means.copy_(torch.rand_like(gmm.means))
        gmm.inv_std.copy_(2.0 + 3.0 * torch.rand_like(gmm.inv_std))
        gmm.mixture_logits.copy_(torch.randn_like(gmm.mixture_logits))
    x = torch.randint(0, 256, (5, 1, 4, 4)).float() / 255.0
    torch.manual_seed(11)
    got = bits_per_dim(module.stack, x)
    torch.manual_seed(11)
    pixels = torch.round(x * 255.0)
    dequantised = ((pixels + torch.rand_like(pixels)) / 256.0).reshape(5, 16).double().numpy()
    mu = gmm.means.detach().reshape(3, 16).double().numpy()
    sd = gmm.variances.reshape(3, 16).double().sqrt().numpy()
    log_pi = np.log(gmm.weights.detach().reshape(3).double().numpy())
    log_p = logsumexp(log_pi + norm.logpdf(dequantised[:, None, :], mu[None], sd[None]).sum(-1), axis=1)
    want = 8.0 - log_p / (16 * np.log(2.0))
    np.testing.assert_allclose(got.detach().double().numpy(), want, rtol=1e-5)

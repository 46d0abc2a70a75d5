"""GMM layer against independent references: scikit-learn's GaussianMixture and hand formulas."""

import math

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from dcgmm.app.module import DCGMMModule
from dcgmm.core.layers import Folding, GMMLayer
from dcgmm.errors import ConfigError


def random_params_(layer: GMMLayer, seed: int = 0) -> None:
    """Give a layer non-trivial weights, means and precisions."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.mixture_logits.copy_(torch.randn(layer.mixture_logits.shape, generator=g))
        layer.means.copy_(torch.rand(layer.means.shape, generator=g))
        layer.inv_std.copy_(0.5 + 3.0 * torch.rand(layer.inv_std.shape, generator=g))


def sklearn_gmm(weights, means, inv_std) -> GaussianMixture:
    """A fitted-looking sklearn GaussianMixture(diag) holding the given parameters."""
    k, d = means.shape
    gm = GaussianMixture(n_components=k, covariance_type="diag")
    gm.weights_ = weights.astype(np.float64)
    gm.means_ = means.astype(np.float64)
    gm.covariances_ = 1.0 / inv_std.astype(np.float64) ** 2
    gm.precisions_cholesky_ = inv_std.astype(np.float64)
    gm.precisions_ = inv_std.astype(np.float64) ** 2
    return gm


def test_shared_flat_matches_sklearn():
    layer = GMMLayer((12, 1, 1), K=9)
    random_params_(layer)
    x = torch.rand(50, 12, 1, 1)
    ours = GMMLayer.log_likelihood(layer.log_scores(x)).detach().numpy()
    ref = sklearn_gmm(
        layer.weights[0].detach().numpy(), layer.means[0].detach().numpy(), layer.inv_std[0].detach().numpy()
    ).score_samples(x.reshape(50, 12).double().numpy())
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_independent_mode_matches_sklearn_per_position():
    layer = GMMLayer((5, 3, 2), K=4, mode="independent")
    random_params_(layer, seed=1)
    x = torch.rand(30, 5, 3, 2)
    per_position = torch.logsumexp(layer.log_scores(x), dim=-1).detach().numpy()  # (N, P)
    patches = x.reshape(30, 5, 6).permute(0, 2, 1).double().numpy()  # (N, P, D)
    for p in range(6):
        gm = sklearn_gmm(
            layer.weights[p].detach().numpy(), layer.means[p].detach().numpy(), layer.inv_std[p].detach().numpy()
        )
        np.testing.assert_allclose(per_position[:, p], gm.score_samples(patches[:, p]), rtol=1e-4)


def test_patchwise_shared_matches_sklearn_on_sliced_patches():
    fold = Folding((1, 10, 10), kernel_size=4, stride=3)
    layer = GMMLayer(fold.out_shape, K=16)
    random_params_(layer, seed=2)
    x = torch.rand(8, 1, 10, 10)
    per_position = torch.logsumexp(layer.log_scores(fold(x)), dim=-1).detach().numpy()  # (N, P)
    gm = sklearn_gmm(
        layer.weights[0].detach().numpy(), layer.means[0].detach().numpy(), layer.inv_std[0].detach().numpy()
    )
    p = 0
    for i in range(0, 10 - 4 + 1, 3):  # explicit patch slicing, row-major positions
        for j in range(0, 10 - 4 + 1, 3):
            patch = x[:, 0, i : i + 4, j : j + 4].reshape(8, 16).double().numpy()
            np.testing.assert_allclose(per_position[:, p], gm.score_samples(patch), rtol=1e-4)
            p += 1
    assert p == fold.out_shape[1] * fold.out_shape[2]


def test_log_score_hand_computed():
    """One component, two dims: the log-score formula (docs/design.md section 1.2) by hand."""
    layer = GMMLayer((2, 1, 1), K=1)
    with torch.no_grad():
        layer.means.copy_(torch.tensor([[[0.5, -1.0]]]))
        layer.inv_std.copy_(torch.tensor([[[2.0, 0.5]]]))
    x = torch.tensor([[1.0, 1.0]]).reshape(1, 2, 1, 1)
    expected = math.log(2.0) + math.log(0.5) - 0.5 * (4 * 0.25 + 0.25 * 4.0) - math.log(2 * math.pi)
    assert layer.log_scores(x).item() == pytest.approx(expected, rel=1e-6)


def test_responsibilities_are_posteriors():
    layer = GMMLayer((6, 2, 3), K=4)
    random_params_(layer, seed=3)
    x = torch.rand(7, 6, 2, 3)
    gamma = layer(x)
    assert gamma.shape == (7, 4, 2, 3)
    torch.testing.assert_close(gamma.sum(1), torch.ones(7, 2, 3))
    gm = sklearn_gmm(layer.weights[0].detach().numpy(), layer.means[0].detach().numpy(), layer.inv_std[0].detach().numpy())
    ref = gm.predict_proba(x[:, :, 1, 2].double().numpy())
    np.testing.assert_allclose(gamma[:, :, 1, 2].detach().numpy(), ref, rtol=1e-4, atol=1e-6)


def test_gemm_form_equals_broadcast_form():
    layer = GMMLayer((20, 3, 3), K=9)
    random_params_(layer, seed=4)
    x = torch.rand(4, 20, 3, 3)
    xs = x.reshape(4, 20, 9).transpose(1, 2)[:, :, None, :]  # (N, P, 1, D)
    mu, s = layer.means[0], layer.inv_std[0]
    direct = (
        torch.log_softmax(layer.mixture_logits[0], -1)
        + torch.log(s).sum(-1)
        - 0.5 * ((xs - mu) ** 2 * s**2).sum(-1)
        - 10 * math.log(2 * math.pi)
    )
    torch.testing.assert_close(layer.log_scores(x), direct, rtol=1e-4, atol=1e-3)


def test_objectives():
    layer = GMMLayer((3, 1, 2), K=4)  # a new layer: no smoothing
    random_params_(layer, seed=5)
    scores = layer.log_scores(torch.rand(5, 3, 1, 2))
    torch.testing.assert_close(layer.objective(scores), scores.amax(-1).mean(1))
    assert torch.all(layer.objective(scores) <= torch.logsumexp(scores, -1).mean(1))  # a lower bound
    exact = GMMLayer((3, 1, 2), K=4, loss="logsumexp")
    torch.testing.assert_close(exact.objective(scores), torch.logsumexp(scores, -1).mean(1))


def test_annealed_objective_uses_smoothing():
    layer = GMMLayer((3, 1, 1), K=9)
    layer.set_sigma(1.0)  # what the annealing component does at the start of training
    random_params_(layer, seed=6)
    assert not torch.equal(layer.smoothing, torch.eye(9))
    scores = layer.log_scores(torch.rand(5, 3, 1, 1))
    torch.testing.assert_close(layer.objective(scores), (scores @ layer.smoothing.t()).amax(-1).mean(1))
    layer.set_sigma(0.01)
    torch.testing.assert_close(layer.objective(scores), scores.amax(-1).mean(1))


def test_initialisation_and_constraint():
    layer = GMMLayer((10, 1, 1), K=4, precision_max=20.0)
    assert torch.allclose(layer.weights, torch.full((1, 4), 0.25))
    assert layer.means.abs().max() <= 0.1
    assert torch.allclose(layer.inv_std, torch.full_like(layer.inv_std, math.sqrt(20.0)))
    with torch.no_grad():
        layer.inv_std[0, 0, 0] = 100.0
        layer.inv_std[0, 1, 0] = -3.0
    layer.constrain_()
    assert layer.inv_std.max().item() == pytest.approx(math.sqrt(20.0))
    assert layer.inv_std.min().item() == pytest.approx(layer.inv_std_min)
    assert torch.isfinite(layer.log_scores(torch.rand(2, 10, 1, 1))).all()


def test_independent_learning_rate_scaled_by_positions():
    shared = dict((n, f) for n, _, f in GMMLayer((2, 3, 4), K=4).parameter_groups())
    indep = dict((n, f) for n, _, f in GMMLayer((2, 3, 4), K=4, mode="independent").parameter_groups())
    assert indep["mu"] == pytest.approx(12 * shared["mu"])
    assert indep["sigma"] == pytest.approx(12 * shared["sigma"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(K=10), "K=10 is not a perfect square"),  # the annealing component's check
        (dict(K=0), "K=0 must be >= 1"),
        (dict(K=4, precision_max=0.0), "variance floor"),
        (dict(K=4, lr=-0.1), r"lr=-0.1 must be > 0; try lr=0.01"),  # the training policy's checks
        (dict(K=4, mode="diag"), "mode='diag' is unknown"),
        (dict(K=4, wait=1.5), "wait=1.5"),
        (dict(K=4, lambda_pi=-1), "lambda_pi=-1 must be >= 0"),
        (dict(K=4, window="ten"), "window='ten' must be an integer"),
    ],
)
def test_bad_config_is_one_line_error(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        DCGMMModule(layers=[{"kind": "gmm", **kwargs}], input_shape=(4, 1, 1))
    assert "\n" not in str(info.value) and str(info.value).startswith("layer 0 (gmm): ")


def test_non_square_K_allowed_without_annealing():
    for spec in ({"anneal": False}, {"loss": "logsumexp"}):
        module = DCGMMModule(layers=[{"kind": "gmm", "K": 10, **spec}], input_shape=(4, 1, 1))
        assert module.stack.top_gmm.K == 10 and not module.schedules[0].enabled
        assert torch.equal(module.stack.top_gmm.smoothing, torch.eye(10))
    with pytest.raises(ConfigError, match="K=10 is not a perfect square"):
        GMMLayer((4, 1, 1), K=10).set_sigma(1.0)
    GMMLayer((4, 1, 1), K=10).set_sigma(0.01)  # the floor is the identity on any grid


def test_log_scores_and_objective_stay_float32_under_bf16_autocast():
    """A bf16 autocast region (trainer.precision=bf16-mixed) must not round the log-scores: they
    are computed in the parameters' float32, bit for bit as outside the region."""
    torch.manual_seed(0)
    layer = GMMLayer((784, 1, 1), K=25)
    x = torch.rand(64, 784, 1, 1)
    plain = layer.log_scores(x)
    objective = layer.objective(plain)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = layer.log_scores(x)
        mixed_objective = layer.objective(mixed)
        bf16 = torch.addmm(torch.zeros(25), x.view(64, 784), layer.means[0].t())  # what autocast does to a plain product
    assert bf16.dtype == torch.bfloat16  # the region is active
    assert mixed.dtype == torch.float32 and mixed_objective.dtype == torch.float32
    assert torch.equal(mixed, plain) and torch.equal(mixed_objective, objective)


def test_sigma_change_keeps_the_kernel_dtype_and_address_in_float64():
    layer = GMMLayer((4, 2, 2), K=9).double()  # what trainer.precision=64-true does
    before = layer.smoothing.data_ptr()
    layer.set_sigma(0.7)
    assert layer.smoothing.dtype == torch.float64 and layer.smoothing.data_ptr() == before
    scores = layer.log_scores(torch.rand(3, 4, 2, 2, dtype=torch.float64))
    assert scores.dtype == torch.float64 and layer.objective(scores).dtype == torch.float64


@pytest.mark.parametrize("shape", [(6, 5, 9), (4, 1, 16), (3, 7, 49)])
def test_smoothed_max_gradient_is_the_winning_row_of_the_kernel(shape):
    """SmoothedMax (the annealed objective's hand-written backward) against autograd through the
    product and the max, in float64, and torch's gradcheck."""
    from dcgmm.core.layers.gmm import SmoothedMax
    from dcgmm.core.layers.smoothing import smoothing_kernel

    k = shape[-1]
    kernel = smoothing_kernel(k, 0.8).double()
    scores = (torch.randn(*shape, dtype=torch.float64) * 5).requires_grad_()
    weights = torch.randn(shape[0], dtype=torch.float64)
    for g in (kernel, None):  # None: the identity (no smoothing), against the plain max
        reference = (scores if g is None else scores @ g.t()).max(dim=-1).values.mean(dim=1)
        (expected,) = torch.autograd.grad((reference * weights).sum(), scores)
        values = SmoothedMax.apply(scores, g)
        (got,) = torch.autograd.grad((values * weights).sum(), scores)
        torch.testing.assert_close(values, reference)
        torch.testing.assert_close(got, expected)
        assert torch.autograd.gradcheck(lambda s, g=g: SmoothedMax.apply(s, g), (scores,))


@pytest.mark.parametrize("groups", [1, 3])
def test_score_weights_backward_is_autograds(groups):
    """ScoreWeights (the log-score weights with a hand-written backward) against autograd through
    the plain expressions of docs/design.md section 1.2, in float64, and torch's gradcheck."""
    from dcgmm.core.layers.gmm import LOG_2PI, ScoreWeights

    generator = torch.Generator().manual_seed(groups)
    k, d = 5, 7
    logits = torch.randn(groups, k, dtype=torch.float64, generator=generator).requires_grad_()
    means = torch.randn(groups, k, d, dtype=torch.float64, generator=generator).requires_grad_()
    inv_std = (torch.rand(groups, k, d, dtype=torch.float64, generator=generator) + 0.3).requires_grad_()
    plain = (
        -0.5 * inv_std**2,
        means * inv_std**2,
        torch.log_softmax(logits, -1) + torch.log(inv_std).sum(-1) - 0.5 * ((means * inv_std) ** 2).sum(-1) - 0.5 * d * LOG_2PI,
    )
    fused = ScoreWeights.apply(logits, means, inv_std)
    outer = [torch.randn(t.shape, dtype=torch.float64, generator=generator) for t in plain]
    for used in [(0, 1, 2), (2,), (0, 1)]:  # every output, and some left out of the loss (no gradient)
        expected = torch.autograd.grad([plain[i] for i in used], (logits, means, inv_std), [outer[i] for i in used], retain_graph=True,
                                       allow_unused=True, materialize_grads=True)
        got = torch.autograd.grad([fused[i] for i in used], (logits, means, inv_std), [outer[i] for i in used], retain_graph=True)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e)
    for f, p in zip(fused, plain):
        torch.testing.assert_close(f, p)
    assert torch.autograd.gradcheck(ScoreWeights.apply, (logits, means, inv_std))

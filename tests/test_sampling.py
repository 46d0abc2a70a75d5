"""Top-down sampling, sharpening, conditional sampling, variants and in-painting."""

import math
from pathlib import Path

import pytest
import torch

from dcgmm.app.config import build_model
from dcgmm.core.model import DCGMM
from dcgmm.core.sampling import Sampler, SamplingOptions, SharpeningOptions, missing_pixels
from dcgmm.errors import ConfigError


def hand_set_flat_gmm(weights, means, stds) -> DCGMM:
    """A flat GMM over 1 x 4 x 4 images with the given parameters (K components, D = 16)."""
    k = len(weights)
    stack = DCGMM([{"kind": "folding", "kernel_size": 4}, {"kind": "gmm", "K": k, "precision_max": 1e4}], (1, 4, 4))
    gmm = stack.top_gmm
    with torch.no_grad():
        gmm.mixture_logits.copy_(torch.log(torch.as_tensor(weights)).view(1, k))
        gmm.means.copy_(torch.as_tensor(means).view(1, k, 16))
        gmm.inv_std.copy_(1.0 / torch.as_tensor(stds).view(1, k, 16))
    return stack


def test_flat_samples_match_parameters_and_weights():
    weights = [0.5, 0.3, 0.2]
    means = torch.stack([torch.full((16,), v) for v in (0.0, 5.0, 10.0)])  # far apart: nearest mean = component
    stds = torch.stack([torch.full((16,), v) for v in (0.5, 1.0, 0.25)])
    stack = hand_set_flat_gmm(weights, means, stds)
    sampler = Sampler(stack, SamplingOptions(top_s=3, divisor=1.0, clamp=False), torch.Generator().manual_seed(0))
    n = 20000
    x = sampler.sample(n).reshape(n, 16)
    component = torch.cdist(x, means).argmin(1)
    freq = torch.bincount(component, minlength=3).float() / n
    for k in range(3):
        se = math.sqrt(weights[k] * (1 - weights[k]) / n)
        assert abs(freq[k] - weights[k]) < 5 * se
        xs = x[component == k]
        m = len(xs)
        assert (xs.mean(0) - means[k]).abs().max() < 5 * stds[k, 0] / math.sqrt(m)
        var_se = stds[k, 0] ** 2 * math.sqrt(2 / (m - 1))
        assert (xs.var(0) - stds[k] ** 2).abs().max() < 5 * var_se


def test_top_layer_draws_from_its_whole_prior_whatever_top_s():
    """Unconditional samples start at the top layer's pi: top-S (here 1) must not apply to it, so
    the component frequencies of 10,000 draws follow pi (chi-square goodness of fit)."""
    from scipy.stats import chisquare

    weights = torch.tensor([0.4, 0.3, 0.2, 0.1])
    means = torch.stack([torch.full((16,), 10.0 * v) for v in range(4)])  # far apart
    stack = hand_set_flat_gmm(weights, means, torch.full((4, 16), 0.5))
    n = 10_000
    x = Sampler(stack, SamplingOptions(top_s=1, divisor=1.0, clamp=False), torch.Generator().manual_seed(3)).sample(n)
    counts = torch.bincount(torch.cdist(x.reshape(n, 16), means).argmin(1), minlength=4)
    assert (counts > 0).all()  # top_s=1 applied to pi would give only component 0
    assert chisquare(counts.numpy(), (weights * n).numpy()).pvalue > 1e-3


def test_divisor_shrinks_std_and_floor_dims_get_zero_std():
    stack = hand_set_flat_gmm([1.0], torch.zeros(1, 16), torch.full((1, 16), 1.0))
    with torch.no_grad():
        stack.top_gmm.inv_std[0, 0, :4] = stack.top_gmm.inv_std_max  # 4 dims at the variance floor
    x = Sampler(stack, SamplingOptions(top_s=1, divisor=4.0, clamp=False), torch.Generator().manual_seed(1)).sample(5000).reshape(5000, 16)
    assert (x[:, :4] == 0).all()
    assert x[:, 4:].std(0).mean().item() == pytest.approx(0.25, rel=0.05)


def test_top_s_one_draws_only_the_argmax_of_the_prior():
    stack = DCGMM([{"kind": "folding", "kernel_size": 2, "stride": 2}, {"kind": "gmm", "K": 9}], (1, 6, 6))
    gmm = stack.top_gmm
    prior = torch.rand(50, 9, 3, 3)
    sampler = Sampler(stack, SamplingOptions(top_s=1, divisor=float("inf"), clamp=False))
    drawn = sampler.top_down(gmm.index, prior)  # divisor inf: every draw is its component's mean
    patches = stack.layers[0](drawn).reshape(50, 4, 9).transpose(1, 2)  # (N, P, D)
    which = torch.cdist(patches, gmm.means[0].detach().expand(50, 9, 4)).argmin(-1)  # (N, P)
    assert torch.equal(which, prior.reshape(50, 9, 9).transpose(1, 2).argmax(-1))


def b_like_stack() -> DCGMM:
    torch.manual_seed(0)
    return DCGMM(
        [{"kind": "folding", "kernel_size": 4, "stride": 2}, {"kind": "gmm", "K": 9},
         {"kind": "folding", "kernel_size": 5, "stride": 1}, {"kind": "gmm", "K": 4}, {"kind": "classifier", "input_layer": 3}],
        (1, 12, 12),
    )


def test_sharpening_increases_target_objective_and_keeps_parameters():
    stack = b_like_stack()
    before = {k: v.detach().clone() for k, v in stack.named_parameters()}
    sampler = Sampler(stack, SamplingOptions(divisor=2.0, clamp=False, sharpening=SharpeningOptions(enabled=True, rate=0.01, iterations=1)), torch.Generator().manual_seed(0))
    x0 = sampler.sample(16)  # includes one sharpening step per folding; now ascend by hand
    target = sampler.sharpening_target(0)
    assert target == 1
    values = []
    x = x0
    for _ in range(20):
        values.append(sampler.sharpening_objective(x, x0, 0, target).item())
        x = sampler.sharpen(x, 0)
    values.append(sampler.sharpening_objective(x, x0, 0, target).item())
    assert all(b >= a - 1e-4 for a, b in zip(values, values[1:])), values
    assert values[-1] > values[0]
    for k, v in stack.named_parameters():
        assert torch.equal(v, before[k]), k


def c_like_stack() -> DCGMM:
    """Two foldings with overlapping patches (layers 0 and 3), like topology C, its GMM layers at
    the start of annealing (sigma0 = 0.25 sqrt(2K))."""
    torch.manual_seed(0)
    stack = DCGMM(
        [{"kind": "folding", "kernel_size": 3, "stride": 1}, {"kind": "gmm", "K": 4}, {"kind": "pooling", "kernel_size": 2},
         {"kind": "folding", "kernel_size": 2, "stride": 1}, {"kind": "gmm", "K": 4}],
        (1, 7, 7),
    )
    for layer in stack.gmm_layers:
        layer.set_sigma(0.25 * (2 * layer.K) ** 0.5)
    return stack


def test_sharpening_rate_per_folding_layer():
    """rate={0: a, 3: b} sharpens below each folding at its own rate: the same as one rate when
    a = b, different images when b changes; a mapping that misses a sharpened folding is refused."""
    def draw(rate):
        sharp = SharpeningOptions(enabled=True, rate=rate, iterations=3)
        return Sampler(c_like_stack(), SamplingOptions(divisor=2.0, clamp=False, sharpening=sharp), torch.Generator().manual_seed(0)).sample(8)

    assert Sampler(c_like_stack(), SamplingOptions(sharpening=SharpeningOptions(enabled=True))).sharpened_foldings() == [0, 3]
    assert torch.equal(draw({0: 0.2, 3: 0.2}), draw(0.2))
    assert not torch.equal(draw({0: 0.2, 3: 0.1}), draw(0.2))
    with pytest.raises(ConfigError, match=r"rate=\{0: 0.2\} sets no value for the sharpened folding layer\(s\) \[3\]"):
        Sampler(c_like_stack(), SamplingOptions(sharpening=SharpeningOptions(enabled=True, rate={0: 0.2})))


def test_sharpening_target_validation():
    stack = b_like_stack()
    with pytest.raises(ConfigError, match="not a gmm layer"):
        Sampler(stack, SamplingOptions(sharpening=SharpeningOptions(enabled=True, target=2)))
    with pytest.raises(ConfigError, match="lies below folding layer 2"):
        Sampler(stack, SamplingOptions(sharpening=SharpeningOptions(enabled=True, target=1, layers=[2])))
    with pytest.raises(ConfigError, match="not a folding layer"):
        Sampler(stack, SamplingOptions(sharpening=SharpeningOptions(enabled=True, layers=[1])))


@pytest.mark.parametrize(
    "options, match",
    [(dict(top_s=0), r"top_s=0 must lie in \[1, K"), (dict(top_s=10), r"top_s=10 must lie in \[1, K"), (dict(divisor=0), r"divisor=0 must be > 0")],
)
def test_bad_sampling_options(options, match):
    with pytest.raises(ConfigError, match=match):
        Sampler(b_like_stack(), SamplingOptions(**options))


def test_bad_sample_requests():
    sampler = Sampler(b_like_stack())
    with pytest.raises(ConfigError, match="n=0"):
        sampler.sample(0)
    with pytest.raises(ConfigError, match=r"classes \[12\] are not among"):
        sampler.conditional([1, 12])
    flat = Sampler(DCGMM([{"kind": "folding"}, {"kind": "gmm", "K": 4}], (1, 4, 4)))
    with pytest.raises(ConfigError, match="needs a model with a classifier"):
        flat.conditional([1])


def test_inpainting_keeps_known_pixels_bit_identical():
    stack = b_like_stack()
    images = torch.rand(8, 1, 12, 12)
    missing = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    missing[..., 6:] = True  # the right half is missing (True = missing, as missing_pixels makes it)
    assert torch.equal(missing, missing_pixels("right_half", (1, 12, 12)))
    filled = Sampler(stack, generator=torch.Generator().manual_seed(0)).inpaint(images, missing, layer=1)
    assert torch.equal(filled[..., :6], images[..., :6])
    assert not torch.equal(filled[..., 6:], images[..., 6:])


def test_prototypes_are_component_means_for_a_flat_gmm():
    means = torch.rand(3, 16)
    stack = hand_set_flat_gmm([0.2, 0.3, 0.5], means, torch.full((3, 16), 0.5))
    protos = Sampler(stack).prototypes(stack.top_gmm.index)
    torch.testing.assert_close(protos.reshape(3, 16), means)


def test_conditional_samples_are_classified_as_requested():
    """A classifier on a hand-set flat GMM whose components are the classes."""
    means = torch.stack([torch.full((16,), v) for v in (0.1, 0.5, 0.9)])
    stack = hand_set_flat_gmm([1 / 3] * 3, means, torch.full((3, 16), 0.05))
    stack = DCGMM(
        [{"kind": "folding", "kernel_size": 4}, {"kind": "gmm", "K": 3, "precision_max": 1e4},
         {"kind": "classifier", "num_classes": 3}], (1, 4, 4),
    )
    with torch.no_grad():
        stack.top_gmm.means.copy_(means.view(1, 3, 16))
        stack.top_gmm.inv_std.fill_(20.0)
        stack.classifier.weight.copy_(5 * torch.eye(3))  # component k -> class k
        stack.classifier.bias.zero_()
    classes = torch.tensor([0, 1, 2] * 10)
    x = Sampler(stack, SamplingOptions(top_s=1, divisor=1.0), torch.Generator().manual_seed(0)).conditional(classes)
    logits = stack(x)
    assert (logits.argmax(1) == classes).float().mean() == 1.0


@pytest.mark.skipif(not (Path(__file__).parents[1] / "data" / "cache" / "mnist.npz").exists(), reason="MNIST cache missing: run `make setup`")
def test_conditional_samples_after_a_short_run_are_classified_as_requested():
    """Flat K=25 with its classifier, 2 epochs on 5,000 MNIST images; then 10 samples per class.

    Measured on this code: 40 % of the samples are classified as requested (chance: 10 %).
    """
    import lightning as L

    from dcgmm.data import ImageDataModule

    root = Path(__file__).parents[1]
    L.seed_everything(0)
    module = build_model("flat_gmm")
    data = ImageDataModule(name="mnist", data_dir=str(root / "data"), val_size=1000)
    L.Trainer(max_epochs=2, limit_train_batches=50, limit_val_batches=0, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, data)
    classes = torch.arange(10).repeat(10)
    x = Sampler(module.stack, SamplingOptions(top_s=1, divisor=5.0), torch.Generator().manual_seed(0)).conditional(classes)
    agreement = (module.stack(x).argmax(1) == classes).float().mean().item()
    assert agreement >= 0.3, agreement  # chance: 0.1


def test_sampling_options_have_one_home():
    """The defaults live in SamplingOptions; sample.py's config, the estimator and the training-time
    sample grids take them from there; every check is SamplingOptions.parse's."""
    from omegaconf import OmegaConf

    from dcgmm.app.callbacks.samples import SampleImages
    from tests.conftest import CONFIG_DIR

    assert SamplingOptions.parse({}) == SamplingOptions() == SampleImages().options
    sample_yaml = OmegaConf.load(CONFIG_DIR / "sample.yaml")
    defaults = SamplingOptions()
    assert (sample_yaml.top, sample_yaml.top_s, sample_yaml.divisor, sample_yaml.pooling_mode) == (defaults.top, defaults.top_s, defaults.divisor, defaults.pooling_mode)
    sharp = SharpeningOptions()
    assert {k: sample_yaml.sharpening[k] for k in ("enabled", "rate", "iterations", "reconstruction", "layers", "target")} == {
        k: getattr(sharp, k) for k in ("enabled", "rate", "iterations", "reconstruction", "layers", "target")}
    parsed = SamplingOptions.parse({"top_s": 3, "divisor": 20, "sharpening": {"rate": {0: 0.2, 3: 0.1}, "iterations": 5}})
    assert parsed.top_s == 3 and parsed.divisor == 20.0 and parsed.sharpening.enabled and parsed.sharpening.rate == {0: 0.2, 3: 0.1}
    assert SamplingOptions.parse({"sharpening": {"enabled": False, "rate": 0.3}}).sharpening.enabled is False
    for bad, message in [({"top_s": 0}, "top_s=0 must be a positive integer"), ({"divisor": True}, "divisor=True must be a number > 0"),
                         ({"divisor": -1}, "divisor=-1.0 must be > 0"), ({"pooling_mode": "max"}, "pooling_mode='max' is unknown"),
                         ({"colour": 1}, "unknown sampling option(s) colour"), ({"sharpening": {"speed": 1}}, "has unknown keys (speed)")]:
        with pytest.raises(ConfigError) as info:
            SamplingOptions.parse(bad)
        assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("mask", "box", "where"), [
    ("right_half", None, (slice(None), slice(14, None))), ("left_half", None, (slice(None), slice(None, 14))),
    ("top_half", None, (slice(None, 14), slice(None))), ("bottom_half", None, (slice(14, None), slice(None))),
    ("box", [8, 4, 12, 6], (slice(8, 20), slice(4, 10))),
])
def test_mask_presets_mark_the_missing_pixels(mask, box, where):
    expected = torch.zeros(1, 1, 28, 28, dtype=torch.bool)
    expected[0, 0][where] = True
    assert torch.equal(missing_pixels(mask, (1, 28, 28), box=box), expected)
    assert torch.equal(missing_pixels(expected[0, 0].numpy().astype(int), (1, 28, 28)), expected)  # 0/1 arrays: 1 = missing


def test_uniform_top_draws_every_component_alike_whatever_pi():
    """top="uniform" (the authors' unconditional top layer) ignores the learned weights: the
    component frequencies of 8,000 draws from a GMM with pi = (0.7, 0.1, 0.1, 0.1) fit 1/4 each
    (chi-square), where top="weights" fits pi."""
    from scipy.stats import chisquare

    weights = torch.tensor([0.7, 0.1, 0.1, 0.1])
    means = torch.stack([torch.full((16,), 10.0 * v) for v in range(4)])
    stack = hand_set_flat_gmm(weights, means, torch.full((4, 16), 0.5))
    n = 8000
    for top, expected in (("uniform", torch.full((4,), n / 4)), ("weights", weights * n)):
        x = Sampler(stack, SamplingOptions(top=top, divisor=1.0, clamp=False), torch.Generator().manual_seed(5)).sample(n)
        counts = torch.bincount(torch.cdist(x.reshape(n, 16), means).argmin(1), minlength=4)
        assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3, (top, counts)


def test_cycle_top_gives_sample_i_component_i_mod_k():
    means = torch.stack([torch.full((16,), 10.0 * v) for v in range(3)])
    stack = hand_set_flat_gmm([0.9, 0.05, 0.05], means, torch.full((3, 16), 0.5))
    x = Sampler(stack, SamplingOptions(top="cycle", divisor=float("inf"), clamp=False)).sample(7)
    torch.testing.assert_close(x.reshape(7, 16), means[torch.arange(7) % 3])  # std 0: each sample is its component's mean


def test_per_layer_top_s_and_divisor():
    """A mapping gives each named GMM layer its own S and divisor; a layer it does not name draws
    among all its components with the learned spread; a mapping that names the only GMM layer
    draws the same images as the single number."""
    stack = build_model("dcgmm2", ["model.layers.1.K=9", "model.layers.3.K=4"]).stack  # GMM layers 1 (K=9) and 3 (K=4)
    sampler = Sampler(stack, SamplingOptions(top_s={1: 2}, divisor={3: 7.0}))
    assert (sampler.context(None, 1).top_s, sampler.context(None, 3).top_s) == (2, 4)
    assert (sampler.context(None, 1).divisor, sampler.context(None, 3).divisor) == (1.0, 7.0)
    flat = hand_set_flat_gmm([0.5, 0.5], torch.rand(2, 16), torch.full((2, 16), 0.3))
    draws = [Sampler(flat, SamplingOptions(top_s=s, divisor=d), torch.Generator().manual_seed(2)).sample(50) for s, d in ((1, 4.0), ({1: 1}, {1: 4.0}))]
    assert torch.equal(*draws)
    for options, message in [(dict(top_s={2: 1}), r"^top_s=\{2: 1\} names layer\(s\) \[2\], which are not gmm layers; gmm layers: \[1, 3\]$"),
                             (dict(top_s={1: 10}), r"^top_s=10 must lie in \[1, K=9\]"), (dict(divisor={3: 0.0}), r"^divisor=0.0 must be > 0")]:
        with pytest.raises(ConfigError, match=message):
            Sampler(stack, SamplingOptions.parse(options))
    for bad, message in [({"top": "pi"}, "top='pi' is unknown; use one of weights, uniform, cycle"),
                         ({"top_s": {"one": 2}}, "the keys are layer indices (integers), not 'one'"), ({"divisor": {1: -2}}, "divisor=-2.0 must be > 0")]:
        with pytest.raises(ConfigError) as info:
            SamplingOptions.parse(bad)
        assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("name", "topology"), [("authors_B", "dcgmm2"), ("authors_C", "dcgmm2_pool"), ("authors_C_fashion", "dcgmm2_pool"),
                                                ("authors_E", "dcgmm3"), ("authors_flat", "flat_gmm")])
def test_authors_sampler_files_compose_and_fit_their_topology(name, topology, sample_cfg):
    """sample.py's sampler=<file> sets the authors' settings (docs/design.md 7.4) over sample.yaml's
    defaults, and they are valid for the topology the file is written for."""
    from omegaconf import OmegaConf

    from dcgmm.app.tasks import sampling_options
    from tests.conftest import CONFIG_DIR

    file = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "sampler" / f"{name}.yaml"))
    options = sampling_options(sample_cfg(f"sampler={name}"))
    assert options.top == file["top"] and options.divisor == file["divisor"]
    assert options.top_s == file.get("top_s", 1)  # a file without top_s keeps sample.yaml's
    assert options.sharpening.enabled == bool(file.get("sharpening"))
    Sampler(build_model(topology).stack, options)  # raises if a layer index does not fit

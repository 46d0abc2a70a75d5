"""The layer contract: a layer kind defined and registered here, outside the package, trains,
samples and checkpoints in a stack with no other file changed (docs/design.md section 9)."""

import math

import lightning as L
import pytest
import torch
from dcgmm.layers import LAYER_KINDS, Layer, TopDownContext, register_layer, unregister_layer
from dcgmm.model import DCGMM
from dcgmm.module import DCGMMModule
from dcgmm.sampling import Sampler, SamplingOptions
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dcgmm.errors import ConfigError


class Standardise(Layer):
    """A learnable per-channel affine map ``y = exp(log_scale) * x + shift`` that learns to make
    its output standard normal: its loss is the negative log-density of ``y`` under N(0, 1) minus
    the log-determinant, per pixel, so the optimum is ``scale = 1/std``, ``shift = -mean/std``."""

    kind = "standardise"
    learns = True

    def __init__(self, in_shape, lr: float | None = None, index: int = 0) -> None:
        super().__init__(in_shape, index)
        self.lr = lr
        self.log_scale = nn.Parameter(torch.zeros(self.in_shape[0], 1, 1))  # (C, 1, 1)
        self.shift = nn.Parameter(torch.zeros(self.in_shape[0], 1, 1))  # (C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H, W)
        return x * self.log_scale.exp() + self.shift

    def loss(self, raw: torch.Tensor, labels=None) -> torch.Tensor:
        return (0.5 * raw.pow(2)).mean() - self.log_scale.mean()

    def top_down(self, signal: torch.Tensor, context: TopDownContext | None = None) -> torch.Tensor:
        return (signal - self.shift.detach()) / self.log_scale.detach().exp()


@pytest.fixture
def standardise_kind():
    register_layer(Standardise)
    yield Standardise
    unregister_layer(Standardise.kind)


TOPOLOGY = [
    {"kind": "standardise", "lr": 0.1},
    {"kind": "folding", "kernel_size": 8},
    {"kind": "gmm", "K": 4, "anneal": False, "loss": "logsumexp", "mu_init": 0.5},
]


def data(n: int = 512, mean: float = 1.0, std: float = 0.5) -> torch.Tensor:
    return mean + std * torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_registered_kind_trains_samples_and_checkpoints(standardise_kind, tmp_path):
    torch.manual_seed(0)
    x = data()
    module = DCGMMModule(TOPOLOGY, input_shape=(1, 8, 8), lr=0.01)
    assert [layer.kind for layer in module.stack.learning_layers] == ["standardise", "gmm"]
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=64, shuffle=True)
    trainer = L.Trainer(max_epochs=30, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)

    # it learned what its loss asks for: the sample mean and std of the data (an independent estimate)
    layer = module.stack.layers[0]
    scale, shift = layer.log_scale.exp().item(), layer.shift.item()
    assert scale == pytest.approx(1.0 / x.std().item(), rel=0.1)
    assert -shift / scale == pytest.approx(x.mean().item(), abs=0.1)
    # and the GMM above was trained on its output: the optimiser had one group per layer, own lr
    lrs = {group["layer"]: group["lr"] for group in trainer.optimizers[0].param_groups}
    assert lrs[0] == pytest.approx(0.1)

    # top-down through the new kind: samples land back in the data's range (mean 1, std 0.5)
    sampler = Sampler(module.stack, SamplingOptions(divisor=1.0, clamp=False), generator=torch.Generator().manual_seed(1))
    samples = sampler.sample(256)
    assert samples.shape == (256, 1, 8, 8)
    assert samples.mean().item() == pytest.approx(1.0, abs=0.15)

    # checkpoint round trip: the same outputs bit for bit
    path = tmp_path / "toy.ckpt"
    trainer.save_checkpoint(path)
    loaded = DCGMMModule.load_from_checkpoint(path)
    with torch.no_grad():
        _, raw_a = module.stack.bottom_up(x[:16])
        _, raw_b = loaded.stack.bottom_up(x[:16])
    for index in raw_a:
        torch.testing.assert_close(raw_a[index], raw_b[index], rtol=0, atol=0)


def test_layer_reads_any_lower_layer_by_input_layer(standardise_kind):
    """``input_layer`` works for any kind: the GMM reads the image, skipping the layer below it."""
    stack = DCGMM([{"kind": "standardise"}, {"kind": "folding", "kernel_size": 8, "input_layer": -1}, {"kind": "gmm", "K": 4}], (1, 8, 8))
    with torch.no_grad():  # away from the identity, so that reading layer 0 instead would show
        stack.layers[0].shift.fill_(2.0)
    x = data(4)
    _, raw = stack.bottom_up(x)
    gmm = stack.layers[2]
    # reference: the GMM's scores of the raw image patches, computed by hand from its parameters
    flat = x.permute(0, 2, 3, 1).reshape(4, 64)
    mu, s = gmm.means.detach()[0], gmm.inv_std.detach()[0]
    expected = (torch.log_softmax(gmm.mixture_logits.detach()[0], -1) + torch.log(s).sum(-1)
                - 0.5 * ((flat[:, None, :] - mu[None]) * s[None]).pow(2).sum(-1) - 32 * math.log(2 * math.pi))
    torch.testing.assert_close(raw[2][:, 0], expected, rtol=1e-4, atol=1e-3)
    assert stack.layers[1].input_layer == -1
    # top-down follows the reads: the folding hands its output to the image, not to layer 0
    images = Sampler(stack, SamplingOptions(clamp=False, divisor=1e6), generator=torch.Generator().manual_seed(0)).sample(2)
    assert images.shape == (2, 1, 8, 8)


def test_register_layer_refuses_duplicates_and_non_layers(standardise_kind):
    class Other(Standardise):
        kind = "standardise"

    with pytest.raises(ConfigError, match="already registered"):
        register_layer(Other)
    assert register_layer(Other, replace=True) is Other and LAYER_KINDS["standardise"] is Other
    with pytest.raises(ConfigError, match="Layer subclass"):
        register_layer(int)


def test_unknown_kind_lists_registered_ones(standardise_kind):
    with pytest.raises(ConfigError, match="known kinds: .*standardise"):
        DCGMM([{"kind": "affine"}], (1, 8, 8))

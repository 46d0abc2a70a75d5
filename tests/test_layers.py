"""Folding, max-pooling and classifier layers against independent computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from dcgmm.core.layers import Folding, LinearClassifier, MaxPooling, TopDownContext
from dcgmm.errors import ConfigError


def sliced_patches(x: torch.Tensor, kh: int, kw: int, sh: int, sw: int) -> torch.Tensor:
    """Patch extraction by explicit slicing: ``(N, C, H, W) -> (N, kh*kw*C, H', W')``, order (i, j, c)."""
    n, c, h, w = x.shape
    rows, cols = range(0, h - kh + 1, sh), range(0, w - kw + 1, sw)
    out = torch.empty(n, c * kh * kw, len(rows), len(cols))
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            out[:, :, a, b] = x[:, :, i : i + kh, j : j + kw].permute(0, 2, 3, 1).reshape(n, -1)
    return out


@pytest.mark.parametrize(
    "shape, kernel, stride",
    [((1, 28, 28), 8, 2), ((1, 28, 28), 3, 1), ((3, 10, 12), (4, 3), (2, 3)), ((25, 13, 13), 4, 1), ((2, 9, 9), 9, 1)],
)
def test_folding_forward_equals_sliced_patches(shape, kernel, stride):
    fold = Folding(shape, kernel_size=kernel, stride=stride)
    x = torch.rand(3, *shape)
    kh, kw = fold.kernel_size
    sh, sw = fold.stride
    expected = sliced_patches(x, kh, kw, sh, sw)
    assert fold.out_shape == tuple(expected.shape[1:])
    torch.testing.assert_close(fold(x), expected)


@pytest.mark.parametrize("shape, kernel, stride", [((1, 28, 28), 8, 2), ((1, 28, 28), 3, 1), ((2, 9, 9), 4, 1), ((1, 28, 28), 28, 1)])
def test_folding_top_down_of_forward_returns_input(shape, kernel, stride):
    fold = Folding(shape, kernel_size=kernel, stride=stride)
    x = torch.rand(2, *shape)
    torch.testing.assert_close(fold.top_down(fold(x)), x)


def test_folding_top_down_averages_overlaps():
    fold = Folding((1, 3, 3), kernel_size=2, stride=1)  # 4 patches; the centre pixel is in all of them
    patches = torch.zeros(1, 4, 2, 2)
    patches[0, 3, 0, 0] = 4.0  # entry (i=1, j=1) of the top-left patch = image pixel (1, 1)
    out = fold.top_down(patches)
    assert out[0, 0, 1, 1].item() == pytest.approx(1.0)  # 4 / 4 patches
    assert out.sum().item() == pytest.approx(1.0)


def test_folding_bad_input():
    with pytest.raises(ConfigError, match=r"larger than its input 28x28"):
        Folding((1, 28, 28), kernel_size=29)
    with pytest.raises(ConfigError, match=r"stride=0 must be >= 1"):
        Folding((1, 28, 28), kernel_size=3, stride=0)
    with pytest.raises(ConfigError, match=r"stride=-1 must be >= 1"):
        Folding((1, 28, 28), kernel_size=3, stride=-1)


def reference_pool(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """Max pooling by the rule H' = 1 + ceil((H - k) / s): windows cut at the edge, by hand."""
    n, c, h, w = x.shape
    oh, ow = 1 + math.ceil((h - k) / s), 1 + math.ceil((w - k) / s)
    out = torch.empty(n, c, oh, ow)
    for a in range(oh):
        for b in range(ow):
            out[:, :, a, b] = x[:, :, a * s : a * s + k, b * s : b * s + k].amax(dim=(-2, -1))
    return out


@pytest.mark.parametrize("size, k, s", [(26, 2, 2), (21, 2, 2), (11, 2, 2), (13, 3, 2), (10, 3, 3), (7, 2, 1)])
def test_pooling_forward_equals_reference(size, k, s):
    pool = MaxPooling((5, size, size), kernel_size=k, stride=s)
    x = torch.randn(2, 5, size, size)
    expected = reference_pool(x, k, s)
    assert pool.out_shape == tuple(expected.shape[1:])
    torch.testing.assert_close(pool(x), expected)
    if size % k == 0 and k == s:
        torch.testing.assert_close(pool(x), F.max_pool2d(x, k, s))


def test_pooling_top_down_dense_copies_to_window():
    pool = MaxPooling((1, 5, 5), kernel_size=2, stride=2)  # 3x3 output, last row/col windows cut
    signal = torch.arange(9.0).reshape(1, 1, 3, 3)
    out = pool.top_down(signal, TopDownContext(pooling_mode="dense"))
    assert out.shape == (1, 1, 5, 5)
    expected = signal.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :5, :5]
    torch.testing.assert_close(out, expected)


def test_pooling_top_down_sparse_keeps_one_position_per_window():
    pool = MaxPooling((3, 6, 6), kernel_size=2, stride=2, top_down_mode="sparse")
    signal = torch.rand(4, 3, 3, 3) + 1.0
    out = pool.top_down(signal, TopDownContext(generator=torch.Generator().manual_seed(0)))
    windows = out.reshape(4, 3, 3, 2, 3, 2).permute(0, 1, 2, 4, 3, 5).reshape(4, 3, 3, 3, 4)
    assert ((windows > 0).sum(-1) == 1).all()  # exactly one non-zero per window
    torch.testing.assert_close(windows.sum(-1), signal)  # ...holding the pooled value


def test_pooling_bad_input():
    with pytest.raises(ConfigError, match=r"kernel_size=0 must be >= 1"):
        MaxPooling((5, 8, 8), kernel_size=0)
    with pytest.raises(ConfigError, match=r"larger than its input"):
        MaxPooling((5, 2, 2), kernel_size=3)
    with pytest.raises(ConfigError, match=r"sparse needs stride == kernel_size"):
        MaxPooling((5, 8, 8), kernel_size=3, stride=2, top_down_mode="sparse")


def test_classifier_forward_init_and_top_down():
    torch.manual_seed(0)
    clf = LinearClassifier((4, 3, 3), num_classes=5)
    assert clf.bias.abs().sum() == 0
    assert clf.weight.std().item() == pytest.approx(1 / 6, rel=0.25)  # 1/sqrt(36)
    x = torch.rand(7, 4, 3, 3)
    torch.testing.assert_close(clf(x), x.reshape(7, -1) @ clf.weight.t() + clf.bias)
    target = clf.target_distribution(torch.tensor([2, 0]))
    torch.testing.assert_close(target.sum(1), torch.ones(2))
    assert target[0, 2].item() == pytest.approx(0.95) and target[0, 0].item() == pytest.approx(0.0125)
    prior = clf.top_down(target)
    expected = (torch.log(target) - clf.bias) @ clf.weight
    expected = expected - expected.min(1, keepdim=True).values
    torch.testing.assert_close(prior, expected.reshape(2, 4, 3, 3))
    assert prior.amin(dim=(1, 2, 3)).abs().max() == 0

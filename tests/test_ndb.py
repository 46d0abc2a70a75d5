"""NDB against hand-computed cases and on MNIST (training-set samples vs. one class)."""

import numpy as np
import pytest
import torch

from dcgmm.app.ndb import NDB, js_divergence
from dcgmm.data import load_dataset
from tests.conftest import DATA_DIR, needs_mnist


def test_js_divergence_hand_cases():
    p = np.array([1.0, 0.0])
    q = np.array([0.0, 1.0])
    assert js_divergence(p, q) == pytest.approx(np.log(2))
    assert js_divergence(np.array([0.2, 0.8]), np.array([0.2, 0.8])) == 0.0


def test_two_proportion_test_by_hand():
    # two well-separated 1-d clusters -> two bins; shares 50/50 in training data
    train = np.concatenate([np.zeros((500, 1)), np.ones((500, 1))]).astype(np.float32)
    ndb = NDB(train, bins=2, kmeans_samples=1000)
    balanced = ndb.evaluate(np.concatenate([np.zeros((50, 1)), np.ones((50, 1))]))
    assert balanced.ndb == 0 and balanced.js == pytest.approx(0.0, abs=1e-12)
    skewed = ndb.evaluate(np.concatenate([np.zeros((90, 1)), np.ones((10, 1))]))
    # pooled p = 590/1100, se = sqrt(p(1-p)(1/100+1/1000)), z = 0.4/se = 7.6 > 1.96 in both bins
    assert skewed.ndb == 2 and skewed.ndb_ratio == 1.0


@needs_mnist
def test_ndb_on_mnist_train_like_vs_single_class(tmp_path):
    data = load_dataset("mnist", DATA_DIR)
    images = torch.from_numpy(data["train_x"]).float() / 255
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))  # MNIST is ordered by writer
    train = images[order[:20000]]
    ndb = NDB(train, bins=50, kmeans_samples=5000, cache=tmp_path / "ndb.npz")
    typical = ndb.evaluate(images[order[30000:32000]])  # unseen training images: same distribution
    ones = ndb.evaluate(images[torch.from_numpy(data["train_y"]) == 1][:1000])
    assert typical.ndb_ratio <= 0.1  # measured 0/50; alpha = 0.05 leaves ~2.5 of 50 bins by chance
    assert ones.ndb_ratio >= 0.6 and ones.js > 10 * typical.js
    cached = NDB(train, bins=50, kmeans_samples=5000, cache=tmp_path / "ndb.npz")
    np.testing.assert_array_equal(cached.centroids, ndb.centroids)

"""A probabilistic-circuit peer on the DCGMM protocol (docs/design.md section 4): a RAT-SPN from spflow.

The optional extra ``peers`` (``pip install -e .[peers]``, which ``make results`` installs) brings
`spflow <https://pypi.org/project/spflow/>`_ 1.1.0, a maintained probabilistic-circuit library.
:func:`circuit_baseline` trains its RAT-SPN (Peharz et al., NeurIPS 2020: random region graph,
Normal leaves over the pixels, one root sum node per class) and scores it as the EM baseline
(:func:`dcgmm.results.baselines.em_baseline`) scores the flat GMM:

* density: the circuit is a normalised density over the pixels, ``log p(x) = log sum_y w_y p(x | y)``
  (nats per image on ``u8 / 255``) and bits/dim with uniform dequantisation, directly comparable
  with the flat GMM's;
* classification: ``argmax_y w_y p(x | y)`` (Bayes' rule on the class-conditional circuits);
* outliers: AUROC of the held-out class(es) by ``-log p(x)``;
* samples: ancestral samples of the whole circuit, for NDB.

Training maximises the joint log-likelihood ``log w_y + log p(x | y)`` of dequantised pixels
``(u8 + u) / 256`` with Adam: generative, as the GMMs are, with the labels that the DCGMM's
classifier also reads. A circuit has no cluster ids, so the clustering columns stay empty. The
leaves' standard deviation has the flat GMM's floor ``sqrt(1 / precision_max)`` (the EM baseline:
``reg_covar = 0.05``), so that the three densities share the same variance floor.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from dcgmm.core.metrics import outlier_auroc
from dcgmm.errors import ConfigError
from dcgmm.results.baselines import flatten_u8, split_for_baseline

__all__ = ["PEERS", "CircuitSettings", "circuit_baseline", "require_peer"]

PEERS = {"circuit": "spflow"}  # peer row kind -> the library it needs (the extra "peers")


def require_peer(kind: str) -> None:
    """A one-line ConfigError when the library of peer ``kind`` is not installed."""
    library = PEERS[kind]
    if importlib.util.find_spec(library) is None:
        raise ConfigError(
            f"the peer row '{kind}' needs the library {library}, which is not installed; "
            f"install the extra: pip install -e '.[peers]' (make results does)"
        )


@dataclass(frozen=True)
class CircuitSettings:
    """The RAT-SPN and its training (``circuit:`` in ``conf/results/<preset>.yaml``).

    Attributes:
        depth: partition/region layers of the random region graph.
        region_nodes: sum nodes per region; leaves: Normal leaves per pixel and repetition.
        repetitions: random region graphs mixed at the root.
        epochs, batch_size, lr: Adam on the joint log-likelihood.
        std_min: floor of the leaves' standard deviation (default: the flat GMM's, sqrt(0.05)).
        n_train: train on the first ``n_train`` training images of the kept classes (None: all).
        seed: initialisation, batch order and dequantisation noise.
    """

    depth: int = 3
    region_nodes: int = 10
    leaves: int = 10
    repetitions: int = 5
    epochs: int = 5
    batch_size: int = 100
    lr: float = 0.01
    std_min: float = math.sqrt(0.05)
    n_train: int | None = None
    seed: int = 0


def build_circuit(dims: int, classes: int, settings: CircuitSettings, init: torch.Tensor):
    """A RAT-SPN over ``dims`` pixels with one root per class; leaf means start at random training
    pixels ``init (N, dims)`` (a data-dependent start, as for k-means), std at 0.5."""
    from spflow.meta.data.scope import Scope
    from spflow.modules.leaves.normal import Normal
    from spflow.zoo.rat.rat_spn import RatSPN

    leaf = Normal(scope=Scope(list(range(dims))), out_channels=settings.leaves, num_repetitions=settings.repetitions)
    with torch.no_grad():
        pick = torch.randint(len(init), (settings.leaves * settings.repetitions,))
        leaf.loc.copy_(init[pick].T.reshape(dims, settings.leaves, settings.repetitions))  # (D, leaves, repetitions)
        leaf.log_scale.fill_(math.log(0.5))
    return RatSPN(
        leaf_modules=[leaf], n_root_nodes=classes, n_region_nodes=settings.region_nodes,
        num_repetitions=settings.repetitions, depth=settings.depth,
    ), leaf


def class_log_joint(circuit, x: torch.Tensor) -> torch.Tensor:
    """``log w_y + log p(x | y)`` for every class: ``(N, D) -> (N, classes)`` nats."""
    conditional = circuit.root_node.inputs.log_likelihood(x).reshape(len(x), -1)  # (N, classes)
    return conditional + circuit.root_node.log_weights.reshape(1, -1)


def batched_log_joint(circuit, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """:func:`class_log_joint` of many images, in batches without gradients: ``(N, classes)``."""
    with torch.no_grad():
        return torch.cat([class_log_joint(circuit, x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def log_likelihood(circuit, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``log p(x)`` in nats per image, ``(N,)``."""
    return torch.logsumexp(batched_log_joint(circuit, x, batch_size), 1)


def circuit_baseline(
    dataset: str = "mnist",
    data_dir: str | os.PathLike[str] = "data",
    held_out: int | Sequence[int] | None = None,
    settings: CircuitSettings | None = None,
    samples: int = 0,
    local_dir: str | os.PathLike[str] | None = None,
) -> dict:
    """Train the RAT-SPN on the training split (held-out classes left out) and score it on the test split.

    Returns:
        dict with ``model``, ``params``, ``train_images``, ``test_images`` (inliers), ``loglik``
        (mean test log-likelihood, nats per image), ``bpd``, ``acc`` (classifier accuracy of the
        test inliers), ``epochs``, ``seconds`` and ``images_per_second`` (training), ``settings``;
        with outliers ``outliers`` and ``auroc``; with ``samples > 0`` ``samples`` (images
        ``(samples, 1, H, W)`` in [0, 1]).
    """
    require_peer("circuit")
    settings = settings or CircuitSettings()
    split = split_for_baseline(dataset, data_dir, held_out, settings.n_train, local_dir=local_dir)
    x_train_u8, y_train = split["train_x"], split["train_y"]
    if len(x_train_u8) < settings.batch_size:
        raise ConfigError(f"the circuit baseline needs at least batch_size={settings.batch_size} training images, got {len(x_train_u8)}")
    generator = torch.Generator().manual_seed(int(settings.seed))
    torch.manual_seed(int(settings.seed))
    pixels = torch.from_numpy(x_train_u8.reshape(len(x_train_u8), -1).astype(np.float32))  # (N, D) in 0..255
    labels = torch.from_numpy(y_train.astype(np.int64))
    dims, classes = pixels.shape[1], split["classes"]
    circuit, leaf = build_circuit(dims, classes, settings, pixels / 255.0)
    optimizer = torch.optim.Adam(circuit.parameters(), lr=settings.lr)
    log_std_min = math.log(settings.std_min)

    start = time.perf_counter()
    seen = 0
    for _ in range(int(settings.epochs)):
        order = torch.randperm(len(pixels), generator=generator)
        for i in range(0, len(order) - settings.batch_size + 1, settings.batch_size):  # full batches
            idx = order[i : i + settings.batch_size]
            x = (pixels[idx] + torch.rand(pixels[idx].shape, generator=generator)) / 256.0  # dequantised
            joint = class_log_joint(circuit, x)  # (B, classes)
            loss = -joint.gather(1, labels[idx, None]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                leaf.log_scale.clamp_(min=log_std_min)
            seen += len(idx)
    seconds = time.perf_counter() - start

    x_test = torch.from_numpy(flatten_u8(split["test_x"]).astype(np.float32))
    y_test = torch.from_numpy(split["test_y"].astype(np.int64))
    joint = batched_log_joint(circuit, x_test)  # (N, classes): log p(x) and the classes from one pass
    inlier = torch.logsumexp(joint, 1)
    rng = torch.Generator().manual_seed(int(settings.seed))
    dequantised = (torch.round(x_test * 255.0) + torch.rand(x_test.shape, generator=rng)) / 256.0
    bpd = 8.0 - log_likelihood(circuit, dequantised).mean().item() / (dims * math.log(2.0))
    predicted = joint.argmax(1)
    result = dict(
        model=circuit, params=sum(p.numel() for p in circuit.parameters()), train_images=len(pixels), test_images=len(x_test),
        loglik=float(inlier.mean()), bpd=float(bpd), acc=float((predicted == y_test).float().mean()),
        epochs=int(settings.epochs), seconds=seconds, images_per_second=seen / seconds if seconds > 0 else float("nan"),
        settings=asdict(settings),
    )
    if len(split["outlier_x"]):
        outlier = log_likelihood(circuit, torch.from_numpy(flatten_u8(split["outlier_x"]).astype(np.float32)))
        result.update(outliers=len(outlier), auroc=outlier_auroc(inlier.numpy(), outlier.numpy()))
    if samples:
        with torch.no_grad():
            drawn = circuit.sample(num_samples=int(samples)).clamp(0.0, 1.0)  # (n, D)
        images = drawn.reshape(int(samples), *split["array_shape"]).float()  # the arrays' layout: (H, W) or (H, W, C)
        result["samples"] = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return result

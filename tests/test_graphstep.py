"""model.cuda_graph=true (dcgmm.training.graphstep.GraphedStep): the module's own SGD step gives what the
automatic path gives. On the CPU the step runs without a graph; a CUDA GPU records and replays it."""

import contextlib

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from dcgmm.app.config import build_model
from dcgmm.data.datamodule import EpochSeededSampler, TensorBatchDataset, keep_batch
from dcgmm.errors import ConfigError
from dcgmm.training.graphstep import GraphedStep
from tests.conftest import gpu_only

DEVICES = ["cpu", pytest.param("cuda", marks=gpu_only)]


def make(cuda_graph: bool, **overrides):
    torch.manual_seed(0)
    settings = {"annealing.window": 3, "annealing.delta": 100, "layers.3.wait": 0.34, "cuda_graph": cuda_graph, **overrides}
    return build_model("dcgmm2", [f"model.{k}={v}" for k, v in settings.items()])


def fit(cuda_graph: bool, device: str, labels: bool = True, steps: int = 30, nudge: float = 0.0, **overrides):
    """Topology B trained ``steps`` steps of batch 50 on fixed random images (3-step annealing windows
    with a threshold that shrinks sigma and lr at every decision;
    layer 3 waits a third of the run); ``nudge``: relative noise added to the images."""
    module = make(cuda_graph, **overrides)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(steps * 50, 1, 28, 28, generator=g)
    if nudge:
        x = x * (1 + nudge * torch.randn(x.shape, generator=torch.Generator().manual_seed(2)))
    y = torch.randint(0, 10, (steps * 50,), generator=g) if labels else None
    loader = DataLoader(TensorBatchDataset(x, y), batch_size=50, sampler=EpochSeededSampler(len(x), 0), collate_fn=keep_batch)
    trainer = L.Trainer(max_epochs=1, accelerator="gpu" if device == "cuda" else "cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(module, loader)
    return module, trainer


@contextlib.contextmanager
def deterministic_cudnn():
    """cuDNN's deterministic algorithms (on a GPU): its default weight-gradient algorithms may sum
    in another order at every run, which alone can move parameters by more than a test's tolerance."""
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("labels", [True, False])
def test_the_graphed_step_trains_as_the_automatic_path(device, labels):
    with deterministic_cudnn():
        auto, auto_trainer = fit(False, device, labels)
        graphed, graphed_trainer = fit(True, device, labels)
    assert graphed_trainer.global_step == auto_trainer.global_step == 30  # every step counted
    assert graphed.annealing.values() == auto.annealing.values()  # the same sigma / lr decisions
    assert graphed.annealing.values()[0][0] < graphed.schedules[1].default_sigma0(49)  # and sigma did shrink
    reference = dict(auto.named_parameters())
    # On the CPU both paths run the same kernels and agree bit for bit. A GPU's eager and captured
    # kernels may round differently, and this run amplifies rounding: images nudged by one part in
    # 1e7 move the top layer's means by about 6e-5 after these 30 steps on the CPU (layer 1's by
    # 1e-6; the max-component objective switches winners). There the paths must agree as closely
    # as the automatic path agrees with itself on images nudged by one float32 rounding.
    nudged = {}
    if device == "cuda":
        with deterministic_cudnn():
            nudged = dict(fit(False, device, labels, nudge=1e-7)[0].named_parameters())
    for name, param in graphed.named_parameters():
        slack = 4 * (nudged[name] - reference[name]).abs().max().item() if nudged else 0.0
        torch.testing.assert_close(param, reference[name], rtol=1e-5, atol=1e-5 + slack,
                                   msg=lambda message, name=name, slack=slack: f"{name} (slack for rounding {slack:.3g}): {message}")
    # a layer that waits (layer 3, the first third) or has no loss (the classifier without labels)
    # is not moved by the zero-weighted update
    auto_metrics, graphed_metrics = auto_trainer.callback_metrics, graphed_trainer.callback_metrics
    torch.testing.assert_close(graphed_metrics["train/loss_epoch"], auto_metrics["train/loss_epoch"], rtol=1e-5, atol=1e-3)
    if not labels:
        fresh = make(False)
        for name, param in graphed.stack.classifier.named_parameters():
            torch.testing.assert_close(param.cpu(), dict(fresh.stack.classifier.named_parameters())[name])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_run_records_few_graphs():
    module, _ = fit(True, "cuda")
    # batch 50 with labels, then again once the smoothing kernels became the identity, at most
    assert 1 <= module.engine.graphed.recordings <= 3


@pytest.mark.parametrize("optimizer, match", [
    (lambda params: torch.optim.Adam(params), "model.optimizer is Adam"),
    (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9), "'momentum': 0.9"),
])
def test_only_plain_sgd_is_recorded(optimizer, match):
    module = build_model("flat_gmm")
    with pytest.raises(ConfigError, match=match) as info:
        GraphedStep(module.stack, optimizer(module.parameters()), capture=False)
    assert "\n" not in str(info.value)


def test_the_step_reads_learning_rates_from_the_optimizer_when_they_change():
    """A changed group lr (annealing) applies from the next step: p <- p - lr * grad with the new lr."""
    torch.manual_seed(0)
    module = build_model("flat_gmm", ["model.K=4", "model.anneal=false"])
    optimizer = module.configure_optimizers()
    step = GraphedStep(module.stack, optimizer, capture=False)
    x, weights = torch.rand(8, 1, 28, 28), torch.ones(1)
    for lr in (0.01, 0.002):
        for group in optimizer.param_groups:
            group["lr"] = lr * group["factor"]
        before = module.stack.top_gmm.means.detach().clone()
        module.zero_grad()
        (-module.stack.top_gmm.objective(module.stack.bottom_up(x)[1][module.stack.top_gmm.index]).mean()).backward()
        expected = before - lr * optimizer.param_groups[0]["factor"] * module.stack.top_gmm.means.grad
        step(x, None, weights)
        torch.testing.assert_close(module.stack.top_gmm.means.detach(), expected)

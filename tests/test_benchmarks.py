"""The benchmark command line runs its measurements end to end (tiny settings; no timing asserted),
and the FLOP count behind the topology benchmark's ratio ceiling."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, needs_mnist


@needs_mnist
def test_epoch_benchmark_splits_train_py_epochs_into_steps_and_the_rest(tmp_path):
    out = tmp_path / "epoch.json"
    command = [sys.executable, "-m", "benchmarks.run", "epoch", "--epochs", "3", "--threads", "1", "--json", str(out), "--",
               "+trainer.limit_train_batches=7", "+trainer.limit_val_batches=2", "logger=none", "model.K=9"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "outside" in result.stdout and "GEMM" in result.stdout
    record = json.loads(out.read_text())
    run = record["result"]
    assert run["train_steps_per_epoch"] == 7 and len(run["epoch_seconds"]) == 3
    assert run["overrides"][-1] == "model.K=9" and run["torch_threads"] == 1
    shares = sorted(1 - s / w for s, w in zip(run["epoch_step_seconds"][1:], run["epoch_seconds"][1:]))
    assert 0 < run["overhead"] < 1 and min(shares) <= run["overhead"] <= max(shares)
    assert record["target"]["met"] == (run["overhead"] < record["target"]["bound"])


@pytest.mark.parametrize("name", ["flat_gmm", "dcgmm2", "dcgmm3", "dcgmm2_pool", "dcgmm4_pool"])
@pytest.mark.parametrize("sigma", [None, 1.0])
def test_the_ratio_ceiling_counts_the_products_of_a_training_step(name, sigma):
    """benchmarks.topology's FLOPs of a training step's products against torch's FLOP counter over
    one real step (forward, backward, SGD) of three images, with and without smoothing."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.topology import product_flops_per_image
    from dcgmm.config import build_model
    from dcgmm.module import plain_sgd_step

    module = build_model(name)
    for layer in module.stack.gmm_layers:
        layer.set_sigma(sigma)
    x, y = torch.rand(3, 1, 28, 28), torch.randint(0, 10, (3,))
    with FlopCounterMode(display=False) as counter:
        plain_sgd_step(module, module.configure_optimizers(), x, y)
    assert 3 * product_flops_per_image(module.stack) == counter.get_total_flops()


def test_the_operator_clock_sees_the_products_of_a_training_step():
    """benchmarks.topology.profile_steps times the operators a step dispatches, forward and backward."""
    from benchmarks.topology import PRODUCT_OPS, profile_steps
    from dcgmm.config import build_model

    module = build_model("dcgmm2")
    result = profile_steps(module, (torch.rand(20, 1, 28, 28), torch.randint(0, 10, (20,))), steps=2, top=50)
    seen = {row["op"] for row in result["ops"]}
    assert {"aten.convolution", "aten.convolution_backward", "aten.addmm", "aten.mm"} <= seen  # B's products, both passes
    assert 0 < result["products_seconds_per_step"] and 0 < result["products_share"]
    products = sum(row["ms_per_step"] for row in result["ops"] if row["op"] in PRODUCT_OPS) / 1000
    assert result["products_seconds_per_step"] == pytest.approx(products)

"""Data-parallel training on two CPU processes (trainer=ddp_sim) against one process."""

import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, dataset_available

pytestmark = pytest.mark.skipif(not dataset_available("mnist"), reason="MNIST cache missing: run `make setup`")


def run_train(tmp_path, name, *overrides):
    folder = tmp_path / name
    cmd = [
        sys.executable, "train.py", f"paths.log_dir={tmp_path / 'logs'}", "logger=csv", "test=false", "seed=0",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=24", "+trainer.limit_val_batches=2",
        "model=dcgmm2", "+model.layers.1.window=10", "+model.layers.3.window=10", "model.layers.3.wait=0.0",
        "+callbacks.snapshot._target_=dcgmm.callbacks.snapshot.ParameterSnapshot", f"+callbacks.snapshot.folder={folder}",
        *overrides,
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_ddp_sim_ranks_agree_and_match_one_process(tmp_path):
    ddp = run_train(tmp_path, "ddp", "trainer=ddp_sim", "trainer.devices=2", "data.batch_size=50")
    rank0 = torch.load(ddp / "params_rank0.pt", weights_only=False)
    rank1 = torch.load(ddp / "params_rank1.pt", weights_only=False)
    assert rank0["world_size"] == 2
    for name, p in rank0["params"].items():
        assert torch.equal(p, rank1["params"][name]), f"{name} differs between ranks"
    for index, state in rank0["schedules"].items():  # same sigma / lr decisions at the same steps
        other = rank1["schedules"][index]
        assert {k: v for k, v in state.items() if k != "window_sum"} == {k: v for k, v in other.items() if k != "window_sum"}

    single = torch.load(run_train(tmp_path, "single", "data.batch_size=100") / "params_rank0.pt", weights_only=False)
    for name, p in single["params"].items():
        torch.testing.assert_close(rank0["params"][name], p, rtol=1e-3, atol=1e-4, msg=f"{name}: DDP vs one process")
    for index, state in single["schedules"].items():
        assert rank0["schedules"][index]["sigma"] == pytest.approx(state["sigma"])

"""Data-parallel training on two CPU processes (trainer=ddp_sim) against one process."""

import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, needs_mnist

pytestmark = needs_mnist


def run_train(tmp_path, name, *overrides):
    folder = tmp_path / name
    cmd = [
        sys.executable, "train.py", f"paths.log_dir={folder / 'logs'}", "logger=csv", "test=false", "seed=0",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=24", "+trainer.limit_val_batches=2",
        "model=dcgmm2", "+model.layers.1.window=10", "+model.layers.3.window=10", "model.layers.3.wait=0.0",
        "+callbacks.snapshot._target_=dcgmm.app.callbacks.snapshot.ParameterSnapshot", f"+callbacks.snapshot.folder={folder}",
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
    # the epoch losses are those of the global batches, not rank 0's half of them
    ddp_loss, single_loss = epoch_losses(ddp), epoch_losses(tmp_path / "single")
    assert set(ddp_loss) == set(single_loss) and len(ddp_loss) >= 3
    for name, value in single_loss.items():
        assert ddp_loss[name] == pytest.approx(value, rel=1e-4), name


def epoch_losses(folder) -> dict[str, float]:
    """The ``train/...loss_epoch`` values of a run's CSV log."""
    import csv

    (path,) = folder.rglob("metrics.csv")
    rows = list(csv.DictReader(path.open()))
    return {k: float(v) for row in rows for k, v in row.items() if k.startswith("train/") and k.endswith("loss_epoch") and v}


def _shared_seed_worker(rank: int, world: int, port: int, out) -> None:
    import torch.distributed as dist

    from dcgmm.data.datamodule import EpochSeededSampler, shared_seed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        seed = shared_seed(1000 + rank)  # what seed=null gives: a different torch seed per process
        out.put((rank, seed, list(EpochSeededSampler(10, seed))))
    finally:
        dist.destroy_process_group()


def test_unseeded_processes_share_one_training_order():
    """seed=null: every process seeds torch differently; the training order must still be one
    permutation split across the processes (disjoint shards that cover every image)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.start_processes(_shared_seed_worker, args=(2, port, out), nprocs=2, start_method="spawn")
    results = dict((rank, (seed, order)) for rank, seed, order in (out.get(timeout=60) for _ in range(2)))
    assert results[0][0] == results[1][0] == 1000  # process 0's seed everywhere
    assert sorted(results[0][1] + results[1][1]) == list(range(10))  # disjoint, complete shards

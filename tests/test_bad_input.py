"""Bad input: a clear one-line error before training, with the problem and the fix."""

import os
import subprocess
import sys

import pytest
import torch

from dcgmm.app.tasks import train
from dcgmm.data import DataError
from dcgmm.errors import ConfigError
from tests.conftest import ROOT, needs_mnist


@pytest.mark.parametrize(
    "override, error, match",
    [
        ("model=flat_gmm model.K=10", ConfigError, r"K=10 is not a perfect square.*use K=9 or K=16"),
        ("model.K=0", ConfigError, r"model.K=0 must be >= 1"),
        ("model.lr=0", ConfigError, r"model.lr=0 must be > 0"),
        ("model.lr=-0.5", ConfigError, r"model.lr=-0.5 must be > 0"),
        ("model.precision_max=0", ConfigError, r"variance floor"),
        ("data.name=cifar", DataError, r"cifar"),
        ("data.classes=[1,12]", DataError, r"12"),
        ("data.local_dir=/nonexistent/mnist", DataError, r"/nonexistent/mnist"),
        ("model.layers=[]", ConfigError, r"no layers"),
        ("model.K=abc", ConfigError, r"^model.K='abc' must be an integer$"),
        ("model.lr=fast", ConfigError, r"^model.lr='fast' must be a number; e.g. model.lr=0.011$"),
        ("model.anneal=maybe", ConfigError, r"^model.anneal='maybe' must be true or false"),
        ("data.batch_size=big", ConfigError, r"^data.batch_size='big' must be an integer"),
        ("model.layers.0.kernel_size=big", ConfigError, r"layer 0 \(folding\): kernel_size='big' must be a positive integer"),
        ("model=flat_gmm model.layers.2.num_classes=ten", ConfigError, r"layer 2 \(classifier\): num_classes='ten' must be an integer"),
        ("trainer.precision=bf16-true", ConfigError, r"trainer.precision=bf16-true is not supported.*32-true, 32, 64-true, 64, 16-mixed, bf16-mixed"),
        ("trainer.precision=16-true", ConfigError, r"trainer.precision=16-true is not supported"),
        ("model.tf32=sometimes", ConfigError, r"^model.tf32='sometimes' must be true or false"),
        ("model.cuda_graph=yes_please", ConfigError, r"^model.cuda_graph='yes_please' must be true or false"),
        ("model.cuda_graph=true trainer=ddp_sim", ConfigError, r"^model.cuda_graph=true trains in one process on one GPU; use trainer=gpu"),
        ("model.cuda_graph=true trainer.precision=bf16-mixed", ConfigError, r"use trainer.precision=32-true or 64-true \(not bf16-mixed\)$"),
        ("model.cuda_graph=true model.compile=true", ConfigError, r"drop model.compile"),
        ("model.cuda_graph=true model.optimizer._target_=torch.optim.Adam", ConfigError, r"plain SGD, but model.optimizer is Adam; use the default"),
        ("model.cuda_graph=true +model.optimizer.momentum=0.9", ConfigError, r"plain SGD, but the optimizer sets \{'momentum': 0.9\}"),
        pytest.param("model.cuda_graph=true", ConfigError, r"model.cuda_graph=true records CUDA graphs but no CUDA GPU is available here",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
    ],
)
def test_bad_config_fails_before_training(train_cfg, tmp_path, override, error, match):
    cfg = train_cfg(*override.split(), "logger=csv", "trainer.max_epochs=1")
    with pytest.raises(error, match=match) as info:
        train(cfg)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.rglob("*.ckpt"))


@needs_mnist
def test_batch_larger_than_training_set(train_cfg, tmp_path):
    cfg = train_cfg("data.classes=[0]", "data.batch_size=100000", "logger=csv", "trainer.max_epochs=1")
    with pytest.raises(DataError, match="batch_size=100000") as info:
        train(cfg)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_non_square_K_is_fine_without_annealing(train_cfg):
    from hydra.utils import instantiate

    assert instantiate(train_cfg("model=flat_gmm", "model.K=10", "model.anneal=false").model).stack.top_gmm.K == 10


@pytest.mark.parametrize("override", ["model.K=10", "data.name=cifar", "model.K=abc"])
def test_cli_prints_one_line_error_and_exits_2(tmp_path, override):
    result = subprocess.run(
        [sys.executable, "train.py", "model=flat_gmm", override, f"paths.log_dir={tmp_path}", "logger=csv"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and override.split("=")[1] in last
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("script", "override", "fix"), [
    ("train.py", "logger=null", "use logger=none"), ("evaluate.py", "callbacks=null", "use callbacks=none"),
    ("sample.py", "logger=None", "use logger=none"), ("train.py", "model=null", "use ~model"),
])
def test_a_config_group_set_to_null_is_one_line_naming_its_options(tmp_path, script, override, fix):
    """Hydra rejects ``group=null`` with a traceback; the entry points name the options first."""
    result = subprocess.run([sys.executable, script, override, f"paths.log_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {override}: a config group takes one of its options (") and line.endswith(fix + (" (to leave the group out)" if "~" in fix else ""))
    assert "none" in line.split("(")[1] or override.startswith("model")
    assert not any(tmp_path.iterdir())  # nothing written


@needs_mnist
@pytest.mark.parametrize("precision", ["64-true", "bf16-mixed"])
def test_training_in_64_bit_and_mixed_precision_runs_through_sigma_changes(train_cfg, precision):
    """Both precisions train through sigma changes (windows of 3 steps force them): 64-true keeps
    the rebuilt smoothing kernels in float64; bf16-mixed keeps the GMM parameters in float32 and the
    losses finite (that the log-scores stay float32 under autocast is tested on the layer)."""
    cfg = train_cfg(
        "model=dcgmm2", f"trainer.precision={precision}", "logger=csv", "test=false", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=30", "+trainer.limit_val_batches=1", "+model.layers.1.window=3", "+model.layers.3.window=3",
    )
    metrics, objects = train(cfg)
    module = objects["model"]
    assert module.schedules[1].sigma < module.schedules[1].default_sigma0(49)  # sigma did change
    dtype = torch.float64 if precision == "64-true" else torch.float32
    assert all(layer.smoothing.dtype == dtype and layer.means.dtype == dtype for layer in module.stack.gmm_layers)
    assert torch.isfinite(torch.as_tensor(metrics["train/loss_epoch"]))


@pytest.mark.parametrize("where", ["under_a_file", "unwritable"])
def test_log_dir_that_cannot_be_made_is_one_line_and_exit_2(tmp_path, where):
    if where == "under_a_file":
        blocker = tmp_path / "notes.txt"
        blocker.write_text("keep me\n")
        log_dir = blocker / "logs"
    else:
        if os.geteuid() == 0:
            pytest.skip("root may write anywhere")
        blocker = tmp_path / "locked"
        blocker.mkdir()
        blocker.chmod(0o500)
        log_dir = blocker / "logs"
    try:
        result = subprocess.run(
            [sys.executable, "train.py", f"paths.log_dir={log_dir}", "logger=csv"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    finally:
        if where == "unwritable":
            blocker.chmod(0o700)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: paths.log_dir") and str(blocker) in last
    assert "Traceback" not in result.stderr
    if where == "under_a_file":
        assert blocker.read_text() == "keep me\n"  # nothing on disk lost
    else:
        assert list(blocker.iterdir()) == []


def test_checkpoint_of_another_topology_names_both(train_cfg, tmp_path):
    """``model=dcgmm3 ckpt_path=<a topology-B checkpoint>``: one line naming both topologies,
    before any training (not Lightning's 40-line size-mismatch traceback)."""
    from hydra.utils import instantiate

    b_module = instantiate(train_cfg("model=dcgmm2").model)
    path = tmp_path / "b.ckpt"
    torch.save({"state_dict": b_module.state_dict(), "hyper_parameters": dict(b_module.hparams)}, path)
    cfg = train_cfg("model=dcgmm3", f"ckpt_path={path}", "logger=csv", "trainer.max_epochs=1")
    with pytest.raises(ConfigError) as info:
        train(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert "(folding 8x8/2 > gmm K=49 > folding 11x11/1 > gmm K=36 > classifier)" in message  # B, saved
    assert "(folding 3x3/1 > gmm K=25 > folding 4x4/2 > gmm K=25 > folding 12x12/1 > gmm K=25 > classifier)" in message  # E, configured
    assert not list(tmp_path.rglob("last.ckpt"))

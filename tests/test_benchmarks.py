"""The benchmark command line runs its measurements end to end (tiny settings; no timing asserted)."""

import json
import subprocess
import sys

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

"""benchmarks/gpu_check.py runs on the CPU (the check prepared for lent GPU machines)."""

import json
import os
import subprocess
import sys

import torch

from tests.conftest import ROOT


def test_gpu_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["parity"]["max_abs_diff"] == 0.0  # CPU against itself: the same arithmetic
    steps = {(row["topology"], row["mode"]): row for row in report["steps"]}
    assert set(steps) == {("A", "eager"), ("B", "eager"), ("E", "eager")}
    assert all(row["images_per_s"] > 0 and "error" not in row for row in steps.values())
    assert [e["model"] for e in report["epochs"]] == ["dcgmm2", "flat_gmm"]
    assert all(e["train_images"] == 2000 and e["fit_seconds"] >= e["step_seconds"] > 0 for e in report["epochs"])
    assert "parity, 2 SGD steps of B" in result.stdout


def test_gpu_check_without_a_gpu_is_a_one_line_error(tmp_path):
    if torch.cuda.is_available():
        return
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: --device cuda but no CUDA GPU")

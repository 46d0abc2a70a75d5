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
    steps = {(row["topology"], row["mode"]): row for row in report["eager"]}
    assert set(steps) == {("A", "eager"), ("B", "eager"), ("E", "eager")}
    assert all(row["images_per_s"] > 0 and "error" not in row for row in steps.values())
    assert report["graph"] is None and report["reduce-overhead"] is None  # CUDA only
    assert [e["model"] for e in report["epochs"]] == ["dcgmm2", "flat_gmm"]
    assert all(e["train_images"] == 2000 and e["fit_seconds"] >= e["step_seconds"] > 0 for e in report["epochs"])
    # TF32 switches change nothing on the CPU; the GMM scores stay float32 under bf16 autocast
    assert [r["topology"] for r in report["tf32"]] == ["A", "B", "E"]
    assert all(r["tf32_abs_diff_max"] == 0 and r["exact_float32_abs_diff_max"] == 0 for r in report["tf32"])
    assert all(r["scores_dtype"] == "float32" and r["abs_diff_max"] < 1e-3 for r in report["autocast"])
    dtypes = {r["precision"]: r.get("parameter_dtype", r.get("error")) for r in report["precision"]}
    assert dtypes == {"32-true": "float32", "64-true": "float64", "bf16-mixed": "float32"}
    assert [r["device"] for r in report["sample"]] == ["cpu"] and report["sample"][0]["finite"]
    if report["data"] == "mnist":  # train.py's own path, 2 short epochs of each model
        assert [r["overrides"][0] for r in report["train"]] == ["model=dcgmm2", "model=flat_gmm", "model=flat_gmm", "model=flat_gmm"]
        assert report["train"][-1]["overrides"][-1] == "model.steps_per_call=10"  # 10 SGD steps per loop call
        assert all(len(r["epoch_seconds"]) == 2 and 0 < r["overhead"] < 1 for r in report["train"])
        assert report["train"][-1]["train_steps_per_epoch"] == report["train"][-2]["train_steps_per_epoch"] == 20  # 2 calls of 10
    assert set(report["stage_seconds"]) == set(report) - {"machine", "quick", "data", "stage_seconds"}
    assert "parity, 2 SGD steps of B" in result.stdout


def test_a_stage_past_the_budget_is_skipped_and_recorded(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--quick", "--stages", "parity", "eager", "--budget", "0"], cwd=ROOT,
        capture_output=True, text=True, timeout=300, env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["parity"].startswith("skipped: past the time budget") and report["eager"].startswith("skipped")
    assert "parity: skipped" in result.stdout


def test_gpu_check_without_a_gpu_is_a_one_line_error(tmp_path):
    if torch.cuda.is_available():
        return
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: --device cuda but no CUDA GPU")


def test_a_failing_test_keeps_what_it_said(tmp_path):
    """The tests stage keeps a failure's assertion lines, not only its name: a lent machine's run
    is often the only one."""
    from benchmarks.gpu_check import pytest_outcome

    (tmp_path / "test_sample.py").write_text(
        "def test_passes():\n    assert True\n\n"
        "def test_fails():\n    assert 1 + 1 == 3, 'stack.layers.3.means differ by 7e-5'\n"
    )
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sample.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    outcome = pytest_outcome(result)
    assert outcome["returncode"] == 1 and "1 failed, 1 passed" in outcome["summary"]
    assert outcome["failed"] and outcome["failed"][0].startswith("FAILED test_sample.py::test_fails")
    assert any("stack.layers.3.means differ by 7e-5" in line for line in outcome["reasons"])

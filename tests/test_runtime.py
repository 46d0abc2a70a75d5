"""Subnormal floats are flushed to zero on torch's worker threads too: the switch belongs to each
thread and a thread inherits it from its creator, so it must be set before the workers start
(dcgmm.training.runtime.flush_denormals). Each case runs in a fresh process with two threads."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

CHECK = """
torch.set_num_threads(2)
(torch.ones(10**6) * 2).sum()  # a parallel operation: torch's worker thread runs half of it
x = torch.ones(10**6, dtype=torch.int32).view(torch.float32)  # the smallest subnormal float, made from its bits
print(int(((x * 2.0) != 0).sum()))  # 0 when every thread flushes subnormals
"""
CASES = {
    "set after the workers started": "import torch\ntorch.set_num_threads(2)\n(torch.ones(10**6) * 2).sum()\ntorch.set_flush_denormal(True)\n",
    "an entry point (prepare_environment)": "import torch\nfrom dcgmm.app.utils import prepare_environment\nprepare_environment()\n",
    "a model built first (the estimator's way)": "import torch\nfrom dcgmm.app.config import build_model\nbuild_model('flat_gmm', ['model.K=4'])\n",
}


def unflushed(prelude: str) -> int:
    result = subprocess.run([sys.executable, "-c", prelude + CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_subnormals_are_flushed_on_every_thread(case):
    count = unflushed(CASES[case])
    if case == "set after the workers started":
        assert count > 0  # the worker kept computing with subnormals: what the other cases must avoid
    else:
        assert count == 0, f"{count} subnormal results survived on a worker thread"

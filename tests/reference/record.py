"""Reference values of the model's behaviour, recorded once and held by tests/test_reference.py, so
that a change of structure can prove that it changed no number.

    python -m tests.reference.record        # rewrite tests/reference/values.json and the checkpoint

What is recorded (CPU, float32):
- ``train/eager`` and ``train/steps_per_call``: topology B after 60 SGD steps of 50 fixed random
  images, with annealing deciding every 10 steps (threshold 100, so sigma and lr shrink at each
  decision) and layer 3 waiting a third of the run: every parameter, and each layer's sigma and lr;
  once with one step per call, once with groups of 4 steps per call.
- ``samples``: draws of the eager model from fixed seeds: unconditional (the authors' top-S 3 and
  divisor 20), conditional on every class, sharpened (5 iterations), and through the estimator.
- ``inpaint``: the right half of 8 fixed images filled through the Hydra task's mask and sampler
  and through the estimator.
- ``checkpoint``: a small topology B (K=4 in both GMM layers) trained 20 steps and saved as
  train.py saves it (``checkpoint_b_small.ckpt``, committed); its per-image log-likelihoods,
  clusters and outlier scores on 64 fixed images.
- ``results/tiny``: the run records of ``python results.py preset=tiny`` (B, the flat GMM
  and the EM baseline, training, clustering, outlier and NDB figures) without what measures the
  clock or names the machine (:func:`tiny_preset_values`); compared exactly on the machine that
  recorded them (its CPU and torch: the preset sets its own threads).

Each tensor is kept as a digest: SHA-256 of its bytes (bit-identity on the machine that recorded it)
and float64 sums and leading values (closeness on any other machine, whose kernels may round
differently).
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from dcgmm.app.api import DCGMMEstimator
from dcgmm.app.checkpoints import load_module
from dcgmm.app.config import build_model
from dcgmm.core.sampling import Sampler, SamplingOptions, SharpeningOptions, missing_pixels
from dcgmm.core.scoring import EvalOutputs
from dcgmm.data.datamodule import EpochBatches, EpochSeededSampler, TensorBatchDataset, keep_batch

FOLDER = Path(__file__).resolve().parent
VALUES = FOLDER / "values.json"
CHECKPOINT = FOLDER / "checkpoint_b_small.ckpt"
STEPS, BATCH = 60, 50


def machine() -> dict:
    """The CPU and library versions that decide rounding: values recorded under the same ones must be bit-identical."""
    model, flags = platform.processor(), ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    # a virtual machine may name every Xeon alike: the instruction-set flags tell the kernels apart
    isa = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:16]
    return {"cpu": model, "cpu_flags_sha256": isa, "torch": torch.__version__, "threads": torch.get_num_threads()}


def digest(tensor: torch.Tensor) -> dict:
    t = tensor.detach().cpu().contiguous()
    flat = t.double().flatten()
    return {
        "sha256": hashlib.sha256(t.numpy().tobytes()).hexdigest(),
        "dtype": str(t.dtype), "shape": list(t.shape),
        "sum": float(flat.sum()), "abs_sum": float(flat.abs().sum()), "head": flat[:8].tolist(),
    }


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def trainer(**settings) -> L.Trainer:
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, use_distributed_sampler=False)
    return L.Trainer(**{**base, **settings})


def train_b(steps_per_call: int, overrides: dict | None = None, steps: int = STEPS):
    """Topology B trained ``steps`` SGD steps (one epoch) on fixed random images; returns the module."""
    torch.manual_seed(0)
    settings = {"annealing.window": 10, "annealing.delta": 100, "layers.3.wait": 0.34, "steps_per_call": steps_per_call, **(overrides or {})}
    module = build_model("dcgmm2", [f"model.{k}={v}" for k, v in settings.items()])
    g = torch.Generator().manual_seed(1)
    x = torch.rand(steps * BATCH, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (steps * BATCH,), generator=g)
    loader = DataLoader(TensorBatchDataset(x, y), batch_size=None, sampler=EpochBatches(EpochSeededSampler(len(x), 0), BATCH),
                        collate_fn=keep_batch)
    fit = trainer(max_epochs=1)
    fit.fit(module, loader)
    return module, fit


def training_values(module) -> dict:
    values = {name: digest(param) for name, param in module.named_parameters()}
    values["annealing"] = [[float(v) for v in pair] for pair in module.annealing.values()]
    return values


def sample_values(module) -> dict:
    stack = module.stack.eval()
    authors = SamplingOptions(top_s=3, divisor=20.0)
    out = {
        "unconditional": Sampler(stack, authors, torch.Generator().manual_seed(0)).sample(16),
        "conditional": Sampler(stack, authors, torch.Generator().manual_seed(1)).conditional(list(range(10))),
        "sharpened": Sampler(stack, SamplingOptions(top_s=3, divisor=20.0, sharpening=SharpeningOptions(enabled=True, iterations=5)),
                             torch.Generator().manual_seed(2)).sample(8),
        "estimator": DCGMMEstimator.from_module(module, device="cpu").sample(16, seed=3, top_s=3, divisor=20.0),
    }
    return {name: digest(t) for name, t in out.items()}


def inpaint_faces(module) -> dict[str, torch.Tensor]:
    """The right half of 8 fixed images filled through the Hydra task's mask and sampler (as
    ``sample.py mode=inpaint`` does it) and through the estimator, from the same seed."""
    x = images(8, seed=4)
    missing = missing_pixels("right_half", (1, 28, 28))  # as sample.py mode=inpaint mask=right_half builds it
    torch.manual_seed(5)
    task = Sampler(module.stack.eval(), SamplingOptions(), torch.Generator().manual_seed(5)).inpaint(x, missing)
    estimator = DCGMMEstimator.from_module(module, device="cpu").inpaint(x, "right_half", seed=5)
    return {"task": task, "estimator": estimator}


def small_checkpoint(path: Path) -> None:
    module, fit = train_b(1, {"layers.1.K": 4, "layers.3.K": 4}, steps=20)
    fit.save_checkpoint(path)


def checkpoint_values(path: Path) -> dict:
    module = load_module(path)
    with torch.no_grad():
        out = EvalOutputs.of(module.stack, images(64, seed=6))
        values = {"loglik": out.top_log_likelihood, "clusters": out.clusters, **{f"typicality/{k}": v for k, v in out.typicalities.items()}}
    return {name: digest(t) for name, t in values.items()}


# what a run record measures of the clock, names of the machine or the code's commit, or where it kept the model
CLOCK_KEYS = ("seconds", "speed", "images_per_second", "machine", "checkpoint", "code")


def tiny_preset_values(payload: dict) -> list[dict]:
    """The run records of a tiny-preset payload (``tiny.json``) without :data:`CLOCK_KEYS`."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in CLOCK_KEYS}
        return [strip(v) for v in value] if isinstance(value, list) else value

    return [strip(run) for run in payload["runs"]]


def tiny_preset_machine() -> dict:
    return {key: value for key, value in machine().items() if key != "threads"}


def record_tiny_preset() -> dict:
    import tempfile

    from dcgmm.results import launch

    with tempfile.TemporaryDirectory() as out:
        assert launch.main(["preset=tiny", f"out={out}"]) == 0
        payload = json.loads((Path(out) / "tiny.json").read_text())
    return {"machine": tiny_preset_machine(), "runs": tiny_preset_values(payload)}


def record() -> dict:
    eager, _ = train_b(1)
    grouped, _ = train_b(4)
    if not CHECKPOINT.exists():  # written once, by the code that the checkpoint must keep loading under
        small_checkpoint(CHECKPOINT)
    return {
        "machine": machine(),
        "train/eager": training_values(eager),
        "train/steps_per_call": training_values(grouped),
        "samples": sample_values(eager),
        "inpaint": {name: digest(t) for name, t in inpaint_faces(eager).items()},
        "checkpoint": checkpoint_values(CHECKPOINT),
        "results/tiny": record_tiny_preset(),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    VALUES.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"wrote {VALUES} and {CHECKPOINT.name} ({CHECKPOINT.stat().st_size / 1e3:.0f} kB)")

"""The GPU check: correctness and speed of the training step on one accelerator, in a few minutes.

    python -m benchmarks.gpu_check                      # on the first CUDA GPU
    python -m benchmarks.gpu_check --device cpu --quick # the same checks on the CPU (CI, no GPU)
    bash benchmarks/gpu_check.sh                        # the whole check, on a GPU machine

It needs the installed torch and lightning (plus hydra-core and omegaconf) and the working tree;
images are MNIST's from the data cache (``--data-dir``) where it exists, synthetic uint8 otherwise.
It runs these stages in order (``--stages`` picks some), writes the JSON file (``--out``) after
each one, so that a run cut short keeps what it measured (``--budget`` skips the stages that would
start too late), and prints a table:

- **parity**: 20 plain SGD steps of topology B from the same weights on the same batches, on the
  CPU and on the device; the largest parameter difference (float32; GPU products sum in another
  order, so a few 1e-6 are expected) and the loss of the last step on both;
- **tests**: the tests marked ``gpu`` (``pytest -m gpu``), which skip without a CUDA GPU;
- **eager, graph, compiled, reduce-overhead**: step time of topologies A (flat K=100), B and E at
  batch 100 and 1,000: eager in IEEE float32 and with TF32 (``model.tf32=true``), graph-captured
  whole (``torch.cuda.CUDAGraph`` of forward, backward, SGD step and precision clipping), compiled
  (``model.compile=true``) and ``model.compile=reduce-overhead`` (CUDA graphs of the compiled
  pass), timed with CUDA events (``perf_counter`` on the CPU), with the peak device memory;
- **tf32**: how far TF32 products and convolutions move the top layer's log-likelihood of A, B and E
  after 300 steps, and that ``dcgmm.training.runtime.exact_float32`` (evaluation) removes that;
- **autocast**: the GMM layers' log-likelihood inside a bf16 autocast region against none;
- **precision**: B trained one epoch at 32-true, 64-true, bf16-mixed and 16-mixed with a 5-step
  annealing window (sigma changes inside the epoch);
- **epochs**: one Lightning epoch of B and of the flat K=100 GMM on 60,000 images (no validation);
- **train**: epochs through ``train.py``'s own path (``trainer=gpu data.on_device=true
  logger=csv``, validation, checkpoints, progress bar, sample grids) of B, flat K=100 and the
  default flat K=25: the epoch's wall time and the share outside the training steps;
- **sample**: samples/s of B with 300 sharpening steps on the CPU and on the device;
- **ddp**: ``trainer=ddp`` on every visible GPU when there is more than one.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import machine_info

REPO_ROOT = Path(__file__).resolve().parents[1]
TOPOLOGIES = {"A": ("flat_gmm", {"K": 100}), "B": ("dcgmm2", {}), "E": ("dcgmm3", {})}


def build(name: str, overrides: dict, device: torch.device, seed: int = 0):
    """``model=<name>`` with model-wide ``overrides`` (dcgmm.app.config.build_model) on ``device``."""
    from dcgmm.app.config import build_model

    torch.manual_seed(seed)
    return build_model(name, [f"model.{key}={value}" for key, value in overrides.items()]).to(device)


def batches(count: int, batch_size: int, device: torch.device, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Synthetic uint8 images turned into [0, 1] floats on the device (as the data path does)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        pixels = torch.randint(0, 256, (batch_size, 1, 28, 28), generator=g, dtype=torch.uint8)
        out.append((pixels.to(device).float().div_(255.0), torch.randint(0, 10, (batch_size,), generator=g).to(device)))
    return out


class Timer:
    """Seconds between ``start()`` and ``stop()``: CUDA events on a GPU (read once), perf_counter otherwise."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            self._a = torch.cuda.Event(enable_timing=True)
            self._b = torch.cuda.Event(enable_timing=True)
            self._a.record()
        else:
            self._t = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self._b.record()
            self._b.synchronize()
            return self._a.elapsed_time(self._b) / 1000.0
        return time.perf_counter() - self._t


def parity(device: torch.device, steps: int) -> dict:
    """The same SGD steps on the CPU and on ``device``: the largest parameter difference."""
    from dcgmm.app.module import plain_sgd_step

    cpu_module, dev_module = build("dcgmm2", {}, torch.device("cpu")), build("dcgmm2", {}, device)
    dev_module.load_state_dict(cpu_module.state_dict())
    data = batches(steps, 100, torch.device("cpu"), seed=1)
    losses = {}
    for name, module in (("cpu", cpu_module), (device.type, dev_module)):
        optimizer = module.configure_optimizers()
        for x, y in data:
            loss = plain_sgd_step(module, optimizer, x.to(module.device), y.to(module.device))
        losses[name] = float(loss)
    reference = cpu_module.state_dict()
    diffs = {k: float((v.detach().cpu() - reference[k]).abs().max()) for k, v in dev_module.state_dict().items() if torch.is_tensor(v) and v.is_floating_point()}
    worst = max(diffs, key=diffs.get)
    return dict(steps=steps, max_abs_diff=diffs[worst], worst_parameter=worst, last_loss=losses)


def graph_step(module, optimizer, x, y):
    """The whole step recorded as one CUDA graph (``model.cuda_graph=true``: forward, backward, SGD
    update and clipping, :class:`dcgmm.training.graphstep.GraphedStep`); returns a step function."""
    from dcgmm.training.graphstep import GraphedStep

    step = GraphedStep(module.stack, optimizer, capture=True)
    weights = torch.ones(len(module.stack.learning_layers), device=x.device)
    return lambda xb, yb: step(xb, yb, weights)


def step_times(device: torch.device, batch_sizes: list[int], steps: int, modes: list[str], deadline: float = float("inf")) -> list[dict]:
    """Median time of one plain SGD step per topology, batch size and mode (eager, eager-tf32,
    compiled, reduce-overhead, graph), with the peak device memory; a row that would start after
    ``deadline`` (``time.perf_counter()``) is skipped (compiling takes a while)."""
    from dcgmm.app.module import plain_sgd_step
    from dcgmm.training.runtime import restore_tf32, set_tf32

    rows = []
    for letter, (name, overrides) in TOPOLOGIES.items():
        for batch_size in batch_sizes:
            data = batches(4, batch_size, device)
            for mode in modes:
                if time.perf_counter() > deadline:
                    rows.append(dict(topology=letter, model=name, batch=batch_size, mode=mode, error="skipped: past the time budget"))
                    continue
                module = build(name, overrides, device)
                optimizer = module.configure_optimizers()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                previous = set_tf32(mode == "eager-tf32")  # model.tf32=true's training steps
                try:
                    if mode == "graph":
                        if device.type != "cuda":
                            continue
                        run = graph_step(module, optimizer, *data[0])
                    else:
                        if mode in ("compiled", "reduce-overhead"):  # the model.compile option
                            module.hparams.compile = True if mode == "compiled" else mode
                            module.configure_model()
                        def run(x, y, module=module, optimizer=optimizer):
                            plain_sgd_step(module, optimizer, x, y)
                    for x, y in data:  # warm-up (and compilation)
                        run(x, y)
                    timer, times = Timer(device), []
                    for i in range(steps):
                        timer.start()
                        run(*data[i % len(data)])
                        times.append(timer.stop())
                    seconds = statistics.median(times)
                    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
                    rows.append(dict(topology=letter, model=name, batch=batch_size, mode=mode, ms_per_step=1000 * seconds,
                                     images_per_s=batch_size / seconds, peak_mib=peak))
                except Exception as err:  # a mode that fails is a finding, not the end of the check
                    rows.append(dict(topology=letter, model=name, batch=batch_size, mode=mode, error=f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"))
                finally:
                    restore_tf32(previous)
    return rows


def fit_module(device: torch.device, model: str, overrides: dict, images: int, trainer_name: str = "default", devices: int = 1,
               precision: str = "32-true", pixels: torch.Tensor | None = None) -> dict:
    """One epoch of ``images`` images (``pixels``, uint8 ``(N, 1, 28, 28)``; synthetic when ``None``)
    through ``DCGMMModule`` and a Lightning trainer built from ``conf/trainer/<trainer_name>.yaml``
    (no validation, no logger, no checkpoint) at ``precision``: wall time of ``trainer.fit`` and of
    its training steps (``TrainingSpeed``), the last epoch's loss and every layer's sigma."""
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from dcgmm.app.callbacks import TrainingSpeed
    from dcgmm.data.datamodule import EpochSeededSampler, TensorBatchDataset, keep_batch

    g = torch.Generator().manual_seed(0)
    if pixels is None:
        pixels = torch.randint(0, 256, (images, 1, 28, 28), generator=g, dtype=torch.uint8)
    pixels = pixels[:images]
    dataset = TensorBatchDataset(pixels.float().div_(255.0), torch.randint(0, 10, (len(pixels),), generator=g))
    loader = DataLoader(dataset, batch_size=100, sampler=EpochSeededSampler(len(pixels), 0), collate_fn=keep_batch)
    strategy = "auto"
    if trainer_name != "default":  # the strategy of conf/trainer/<name>.yaml (e.g. ddp), spawned:
        # a re-launched script (DDP's default) would run the whole check again in every process
        strategy = instantiate(OmegaConf.load(REPO_ROOT / "conf" / "trainer" / f"{trainer_name}.yaml").strategy, start_method="spawn")
    speed = TrainingSpeed()
    trainer = L.Trainer(
        max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=devices, strategy=strategy, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        use_distributed_sampler=False, callbacks=[speed], precision=precision,
    )
    module = build(model, overrides, torch.device("cpu"))
    start = time.perf_counter()
    trainer.fit(module, loader)
    wall = time.perf_counter() - start
    result = dict(model=model, images=len(pixels), devices=devices, precision=precision, wall_s=wall)
    if devices > 1:  # the step timings stay in the spawned processes: the wall time of fit only
        return dict(result, fit_seconds=wall)
    loss = trainer.callback_metrics.get("train/loss_epoch")
    sigmas = [float(layer.sigma) for layer in module.stack.gmm_layers if layer.sigma is not None]
    dtype = str(next(module.stack.parameters()).dtype).replace("torch.", "")
    return dict(result, loss_epoch=None if loss is None else float(loss), sigmas=sigmas, parameter_dtype=dtype, **speed.as_dict())


def ddp_epoch() -> dict | None:
    count = torch.cuda.device_count()
    if count < 2:
        return None
    return fit_module(torch.device("cuda"), "dcgmm2", {}, 60_000, trainer_name="ddp", devices=count)


def mnist_pixels(data_dir: Path, split: str = "train") -> torch.Tensor | None:
    """MNIST's uint8 images ``(N, 1, 28, 28)`` from the data cache, or ``None`` when it is not there
    (nothing is downloaded: the check runs on machines without a network)."""
    if not (data_dir / "cache" / "mnist.npz").is_file():
        return None
    from dcgmm.data import load_dataset
    from dcgmm.data.datamodule import pixel_tensor

    return pixel_tensor(load_dataset("mnist", data_dir, download=False)[f"{split}_x"])


def tf32_effect(device: torch.device, pixels: torch.Tensor | None, steps: int, images: int) -> list[dict]:
    """What TF32 does to reported numbers: topologies A, B, E after ``steps`` SGD steps (IEEE float32),
    the top layer's log-likelihood of ``images`` images with TF32 matrix products and convolutions
    against IEEE float32 (nats per image), the share of changed top-layer assignments, and the same
    difference through the estimator's scoring path (``exact_float32``: expected 0)."""
    from dcgmm.app.module import plain_sgd_step
    from dcgmm.core.scoring import EvalOutputs
    from dcgmm.training.runtime import exact_float32, restore_tf32, set_tf32

    data = [(x, y) for x, y in batches(steps, 100, device, seed=2)] if pixels is None else [
        (pixels[i * 100 : (i + 1) * 100].to(device).float().div_(255.0), torch.zeros(100, dtype=torch.long, device=device)) for i in range(steps)]
    test = (pixels[-images:] if pixels is not None else torch.randint(0, 256, (images, 1, 28, 28), dtype=torch.uint8)).to(device).float().div_(255.0)
    rows = []
    for letter, (name, overrides) in TOPOLOGIES.items():
        module = build(name, overrides, device)
        optimizer = module.configure_optimizers()
        previous = set_tf32(False)
        try:
            for x, y in data:
                plain_sgd_step(module, optimizer, x, y)
            with torch.no_grad():
                exact = EvalOutputs.of(module.stack, test)
                set_tf32(True)
                fast = EvalOutputs.of(module.stack, test)
                with exact_float32():
                    guarded = EvalOutputs.of(module.stack, test)
                diff = (fast.top_log_likelihood - exact.top_log_likelihood).abs()
                flips = (fast.clusters != exact.clusters).float().mean()
                guarded_diff = (guarded.top_log_likelihood - exact.top_log_likelihood).abs().max()
                rows.append(dict(topology=letter, model=name, images=images, loglik_mean=float(exact.top_log_likelihood.mean()),
                                 tf32_abs_diff_median=float(diff.median()), tf32_abs_diff_max=float(diff.max()),
                                 tf32_assignment_changes=float(flips), exact_float32_abs_diff_max=float(guarded_diff)))
        finally:
            restore_tf32(previous)
    return rows


def autocast_drift(device: torch.device, pixels: torch.Tensor | None, images: int) -> list[dict]:
    """Top-layer log-likelihood of B and E under a bf16 (CUDA) autocast region against none: the GMM
    layers compute in float32 inside it, so the difference stays at float32 rounding."""
    from dcgmm.core.scoring import EvalOutputs

    test = (pixels[-images:] if pixels is not None else torch.randint(0, 256, (images, 1, 28, 28), dtype=torch.uint8)).to(device).float().div_(255.0)
    dtype = torch.bfloat16
    rows = []
    for letter in ("B", "E"):
        name, overrides = TOPOLOGIES[letter]
        module = build(name, overrides, device)
        with torch.no_grad():
            plain = EvalOutputs.of(module.stack, test).top_log_likelihood
            with torch.autocast(device.type, dtype=dtype):
                mixed = EvalOutputs.of(module.stack, test)
                mixed_ll, mixed_dtype = mixed.top_log_likelihood, mixed.top_scores.dtype
        diff = (mixed_ll.float() - plain).abs()
        rows.append(dict(topology=letter, autocast=str(dtype).replace("torch.", ""), scores_dtype=str(mixed_dtype).replace("torch.", ""),
                         abs_diff_median=float(diff.median()), abs_diff_max=float(diff.max())))
    return rows


def precisions(device: torch.device, images: int, pixels: torch.Tensor | None) -> list[dict]:
    """Topology B trained one epoch at each trainer precision with a 5-step annealing window (so
    sigma changes within the epoch): the loss, the sigmas and the parameters' dtype, or the error."""
    names = ["32-true", "64-true"] + (["bf16-mixed", "16-mixed"] if device.type == "cuda" else ["bf16-mixed"])
    rows = []
    for precision in names:
        try:
            rows.append(fit_module(device, "dcgmm2", {"annealing.window": 5}, images, precision=precision, pixels=pixels))
        except Exception as err:  # a precision that fails is a finding
            rows.append(dict(model="dcgmm2", precision=precision, error=f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"))
    return rows


def train_path(device: torch.device, data_dir: Path, epochs: int, quick: bool) -> list[dict]:
    """Epochs through ``train.py``'s own path (``benchmarks.epoch.measure_epochs``: the composed
    config, the data module, validation after every epoch, checkpoints, the progress bar, sample
    grids and the CSV logger) for B, flat K=100 and the default flat K=25; on CUDA with the training
    images on the device (``data.on_device=true``), eager, as one CUDA graph per step, and as CUDA
    graphs run 50 steps per call of Lightning's loop (``model.steps_per_call=50``)."""
    from benchmarks.epoch import measure_epochs

    if device.type == "cuda":
        base = ["trainer=gpu", "data.on_device=true", "logger=csv"]
    else:
        base = ["trainer=cpu", "logger=csv"]
    if quick:
        base += ["+trainer.limit_train_batches=20", "+trainer.limit_val_batches=1"]
    rows = []
    runs = [["model=dcgmm2"], ["model=flat_gmm", "model.K=100"], ["model=flat_gmm"]]
    if device.type == "cuda":  # the same with the whole step as one CUDA graph, then 50 such steps per loop call
        runs += [[*run, "model.cuda_graph=true"] for run in runs]
        runs += [[*run, "model.cuda_graph=true", "model.steps_per_call=50", "trainer.log_every_n_steps=50"] for run in runs[:2]]
    else:  # ten SGD steps per call of Lightning's loop
        runs += [["model=flat_gmm", "model.steps_per_call=10"]]
    for overrides in runs:
        try:
            result = measure_epochs([*overrides, *base], epochs, None, str(data_dir))
            rows.append(dict(overrides=overrides, **{k: result[k] for k in (
                "train_steps_per_epoch", "epoch_seconds", "epoch_step_seconds", "epoch_seconds_median", "epoch_step_seconds_median", "overhead")}))
        except Exception as err:
            rows.append(dict(overrides=overrides, error=f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"))
    return rows


def sampling_speed(device: torch.device, n: int, iterations: int) -> list[dict]:
    """Samples per second of topology B with ``iterations`` sharpening steps, on the CPU and on
    ``device``, with the random generator on the sampling device (as ``sample.py device=...``)."""
    from dcgmm.core.sampling import Sampler, SamplingOptions, SharpeningOptions

    options = SamplingOptions(sharpening=SharpeningOptions(enabled=True, rate=0.1, iterations=iterations))
    rows = []
    for where in dict.fromkeys([torch.device("cpu"), device]):
        module = build("dcgmm2", {}, where)
        sampler = Sampler(module.stack, options, torch.Generator(device=where).manual_seed(0))
        sampler.sample(2)  # warm-up
        timer = Timer(where)
        timer.start()
        images = sampler.sample(n)
        seconds = timer.stop()
        rows.append(dict(device=str(where), n=n, sharpening_iterations=iterations, seconds=seconds, samples_per_s=n / seconds,
                         finite=bool(torch.isfinite(images).all())))
    return rows


def describe(device: torch.device) -> dict:
    info = dict(device=str(device), torch=torch.__version__, python=platform.python_version(), cpu=machine_info()["cpu_model"])
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, gpus=torch.cuda.device_count(), cuda=torch.version.cuda)
    return info


def gpu_tests() -> dict:
    """The tests marked ``gpu`` (they skip without a CUDA GPU), run by pytest in a subprocess from
    the test files that use the marker: exit status, pytest's summary line, and for a failure
    the lines that say why (:func:`pytest_outcome`)."""
    import subprocess

    files = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "tests").glob("test_*.py")
                   if "mark.gpu" in p.read_text() or "gpu_only" in p.read_text())
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    return dict(files=files, **pytest_outcome(result))


def pytest_outcome(result, max_reasons: int = 40) -> dict:
    """Exit status, summary line, failed tests and the first ``max_reasons`` error lines (pytest's
    ``E``-prefixed lines: the assertion and its message) of a finished ``pytest -q`` subprocess,
    so that a run on a lent machine keeps what a failure said."""
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    reasons = [line[:300] for line in lines if line.startswith("E ")][:max_reasons]
    summary = lines[-1] if lines else result.stderr[-300:]
    return dict(returncode=result.returncode, summary=summary, failed=failed, reasons=reasons)


STAGES = ("parity", "tests", "eager", "graph", "tf32", "autocast", "precision", "epochs", "train", "sample", "compiled", "reduce-overhead", "ddp")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:<i> or cpu")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, batch 100 only, small epochs")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="what to run, in this order (default: all)")
    parser.add_argument("--budget", type=float, default=float("inf"),
                        help="seconds: a stage that would start later is skipped (the JSON says so), so a run with a hard time limit ends with its results")
    parser.add_argument("--data-dir", default=str(REPO_ROOT / "data"), help="MNIST data cache for the train, tf32 and precision stages (synthetic images without it)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "gpu_check.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible; use --device cpu", file=sys.stderr)
        return 2
    start = time.perf_counter()
    quick, cuda = args.quick, device.type == "cuda"
    steps = 3 if quick else 50
    batch_sizes = [100] if quick else [100, 1000]
    data_dir = Path(args.data_dir)
    pixels = mnist_pixels(data_dir)
    result = dict(machine=describe(device), quick=quick, data="mnist" if pixels is not None else "synthetic", stage_seconds={})
    deadline = start + args.budget
    stages = {
        "parity": lambda: parity(device, 2 if quick else 20),
        "tests": lambda: gpu_tests() if cuda else None,
        "eager": lambda: step_times(device, batch_sizes, steps, ["eager", "eager-tf32"] if cuda else ["eager"], deadline),
        "graph": lambda: step_times(device, batch_sizes, steps, ["graph"], deadline) if cuda else None,
        "tf32": lambda: tf32_effect(device, pixels, 5 if quick else 300, 200 if quick else 5000),
        "autocast": lambda: autocast_drift(device, pixels, 200 if quick else 5000),
        "precision": lambda: precisions(device, 1000 if quick else 6000, pixels),
        "epochs": lambda: [fit_module(device, m, o, 2_000 if quick else 60_000) for m, o in (("dcgmm2", {}), ("flat_gmm", {"K": 100}))],
        "train": lambda: train_path(device, data_dir, 2 if quick else 4, quick) if pixels is not None else "skipped: no MNIST cache under --data-dir",
        "sample": lambda: sampling_speed(device, 8 if quick else 64, 3 if quick else 300),
        "compiled": lambda: step_times(device, batch_sizes, steps, ["compiled"], deadline) if cuda or not quick else None,
        "reduce-overhead": lambda: step_times(device, batch_sizes, steps, ["reduce-overhead"], deadline) if cuda else None,
        "ddp": lambda: None if quick or not cuda else ddp_epoch(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from dcgmm.training.runtime import set_tf32

    set_tf32(False)  # IEEE float32 products and convolutions unless a stage asks for TF32
    for name in args.stages:
        began = time.perf_counter()
        if began - start > args.budget:
            result[name] = f"skipped: past the time budget of {args.budget:.0f} s"
        else:
            try:
                result[name] = stages[name]()
            except Exception as err:  # a stage that fails is a finding, not the end of the check
                result[name] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            print(f"[{time.perf_counter() - start:6.1f} s] {name} done in {time.perf_counter() - began:.1f} s", flush=True)
        result["stage_seconds"][name] = time.perf_counter() - began
        out.write_text(json.dumps(result, indent=2) + "\n")  # after every stage: a run cut short keeps what it measured
    print(format_result(result))
    return 0


def format_result(result: dict) -> str:
    """The JSON result as a text table; a stage that failed or was skipped shows its reason."""
    m = result["machine"]
    lines = [f"device: {m.get('gpu', m['cpu'])} ({m['device']}), torch {m['torch']}, images: {result.get('data')}"]

    def listed(name: str):
        value = result.get(name)
        if isinstance(value, str):
            lines.append(f"{name}: {value}")
            return []
        return value if isinstance(value, list) else []

    tests = result.get("tests")
    if isinstance(tests, dict):
        lines.append(f"tests marked gpu ({', '.join(tests['files'])}): {tests['summary']}"
                     + "".join(f"\n  {line}" for line in tests["failed"] + tests.get("reasons", [])))
    elif tests is not None:
        lines.append(f"tests: {tests}")
    p = result.get("parity")
    if isinstance(p, dict):
        lines.append(f"parity, {p['steps']} SGD steps of B, CPU vs device: max |diff| {p['max_abs_diff']:.2e} ({p['worst_parameter']}); last loss {p['last_loss']}")
    elif p is not None:
        lines.append(f"parity: {p}")
    rows = [row for stage in ("eager", "graph", "compiled", "reduce-overhead") for row in listed(stage)]
    if rows:
        lines.append(f"{'topology':<9}{'batch':>6}  {'mode':<16}{'ms/step':>9}{'images/s':>11}{'peak MiB':>10}")
    for row in rows:
        if "error" in row:
            lines.append(f"{row['topology']:<9}{row['batch']:>6}  {row['mode']:<16}  failed: {row['error']}")
        else:
            peak = "" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
            lines.append(f"{row['topology']:<9}{row['batch']:>6}  {row['mode']:<16}{row['ms_per_step']:>9.2f}{row['images_per_s']:>11,.0f}{peak:>10}")
    for row in listed("tf32"):
        lines.append(f"tf32 {row['topology']}: top log-likelihood {row['loglik_mean']:.1f} nats; TF32 moves it by {row['tf32_abs_diff_median']:.3g} (median), "
                     f"{row['tf32_abs_diff_max']:.3g} (max), changes {row['tf32_assignment_changes']:.2%} of assignments; exact_float32: {row['exact_float32_abs_diff_max']:.3g}")
    for row in listed("autocast"):
        lines.append(f"autocast {row['autocast']} {row['topology']}: GMM scores in {row['scores_dtype']}, log-likelihood moves by "
                     f"{row['abs_diff_median']:.3g} (median), {row['abs_diff_max']:.3g} (max)")
    def each(name: str, label, describe) -> None:  # one line per row of a stage; a row may hold an error
        for row in listed(name):
            lines.append(f"{label(row)}: " + (f"failed: {row['error']}" if "error" in row else describe(row)))

    each("precision", lambda r: f"precision {r['precision']}",
         lambda r: f"parameters {r['parameter_dtype']}, loss {r['loss_epoch']}, sigmas {[round(v, 3) for v in r['sigmas']]}, {r['images_per_second']:,.0f} images/s")
    epochs = listed("epochs") + ([result["ddp"]] if isinstance(result.get("ddp"), dict) else [])
    for epoch in epochs:
        steps = f", of it steps {epoch['step_seconds']:.2f} s ({epoch['images_per_second']:,.0f} images/s)" if "step_seconds" in epoch else ""
        lines.append(f"epoch {epoch['model']} ({epoch['images']:,} images, {epoch['devices']} device(s)): fit {epoch['fit_seconds']:.2f} s{steps}")
    if isinstance(result.get("ddp"), str):
        lines.append(f"ddp: {result['ddp']}")
    each("train", lambda r: f"train.py {' '.join(r['overrides'])}",
         lambda r: f"epoch {r['epoch_seconds_median']:.2f} s, steps {r['epoch_step_seconds_median']:.2f} s, "
                   f"outside the steps {r['overhead']:.0%} ({r['train_steps_per_epoch']} steps per epoch)")
    for row in listed("sample"):
        lines.append(f"sampling on {row['device']}: {row['n']} samples, {row['sharpening_iterations']} sharpening steps: {row['seconds']:.2f} s "
                     f"({row['samples_per_s']:,.1f} samples/s)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""The GPU check: correctness and speed of the training step on one accelerator, in a few minutes.

    python -m benchmarks.gpu_check                      # on the first CUDA GPU
    python -m benchmarks.gpu_check --device cpu --quick # the same checks on the CPU (CI, no GPU)
    bash benchmarks/gpu_check.sh                        # the whole check, as run on a lent GPU machine

It needs the installed torch and lightning and the working tree; images are synthetic uint8 (the
data cache is not needed). It writes a JSON file (``--out``) and prints a table:

1. **parity**: 20 plain SGD steps of topology B from the same weights on the same batches, on the
   CPU and on the device; the largest parameter difference (float32; GPU matrix products sum in
   another order, so a few 1e-6 are expected) and the loss of the last step on both;
2. **step time** of topologies A (flat K=100), B and E at batch 100 and 1,000: eager, compiled
   (``model.compile=true``) and, on CUDA, ``model.compile=reduce-overhead`` (CUDA graphs of the
   compiled pass) and graph-captured whole (``torch.cuda.CUDAGraph`` of forward, backward, SGD
   step and precision clipping), timed with CUDA events (``perf_counter`` on the CPU), with the
   images per second and the peak device memory;
3. **Lightning epoch** of B and of the flat K=100 GMM: ``DCGMMModule`` and a trainer from
   ``conf/trainer/`` (what ``train.py`` builds) on 60,000 synthetic images, no validation; the wall
   time of ``trainer.fit`` and of its training steps;
4. **data parallel**: ``trainer=ddp`` on every visible GPU when there is more than one.
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

REPO_ROOT = Path(__file__).resolve().parents[1]
TOPOLOGIES = {"A": ("flat_gmm", {"K": 100}), "B": ("dcgmm2", {}), "E": ("dcgmm3", {})}


def build(name: str, overrides: dict, device: torch.device, seed: int = 0):
    """``model=<name>`` with model-wide ``overrides`` (dcgmm.config.build_model) on ``device``."""
    from dcgmm.config import build_model

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
    from dcgmm.module import plain_sgd_step

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
    """Capture forward, backward, SGD step and clipping as one CUDA graph; returns ``replay``."""
    from dcgmm.module import plain_sgd_step

    static_x, static_y = x.clone(), y.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as capture requires
        for _ in range(3):
            plain_sgd_step(module, optimizer, static_x, static_y, set_to_none=False)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plain_sgd_step(module, optimizer, static_x, static_y, set_to_none=False)

    def replay(xb, yb):
        static_x.copy_(xb)
        static_y.copy_(yb)
        graph.replay()

    return replay


def step_times(device: torch.device, batch_sizes: list[int], steps: int, modes: list[str]) -> list[dict]:
    from dcgmm.module import plain_sgd_step

    rows = []
    for letter, (name, overrides) in TOPOLOGIES.items():
        for batch_size in batch_sizes:
            data = batches(4, batch_size, device)
            for mode in modes:
                module = build(name, overrides, device)
                optimizer = module.configure_optimizers()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
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
    return rows


def lightning_epoch(device: torch.device, model: str, overrides: dict, images: int, trainer_name: str = "default", devices: int = 1) -> dict:
    """One epoch of ``images`` synthetic images through ``DCGMMModule`` and a Lightning trainer
    built from ``conf/trainer/<trainer_name>.yaml`` (no validation, no logger, no checkpoint):
    wall time of ``trainer.fit`` and of its training steps (``TrainingSpeed``)."""
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from dcgmm.callbacks import TrainingSpeed
    from dcgmm.data.datamodule import EpochSeededSampler, TensorBatchDataset, keep_batch

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (images, 1, 28, 28), generator=g, dtype=torch.uint8)
    dataset = TensorBatchDataset(pixels.float().div_(255.0), torch.randint(0, 10, (images,), generator=g))
    loader = DataLoader(dataset, batch_size=100, sampler=EpochSeededSampler(images, 0), collate_fn=keep_batch)
    strategy = "auto"
    if trainer_name != "default":  # the strategy of conf/trainer/<name>.yaml (e.g. ddp), spawned:
        # a re-launched script (DDP's default) would run the whole check again in every process
        strategy = instantiate(OmegaConf.load(REPO_ROOT / "conf" / "trainer" / f"{trainer_name}.yaml").strategy, start_method="spawn")
    speed = TrainingSpeed()
    trainer = L.Trainer(
        max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=devices, strategy=strategy, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        use_distributed_sampler=False, callbacks=[speed],
    )
    module = build(model, overrides, torch.device("cpu"))
    start = time.perf_counter()
    trainer.fit(module, loader)
    wall = time.perf_counter() - start
    if devices > 1:  # the step timings stay in the spawned processes: the wall time of fit only
        return dict(model=model, images=images, devices=devices, wall_s=wall, fit_seconds=wall)
    return dict(model=model, images=images, devices=devices, wall_s=wall, **speed.as_dict())


def ddp_epoch() -> dict | None:
    count = torch.cuda.device_count()
    if count < 2:
        return None
    return lightning_epoch(torch.device("cuda"), "dcgmm2", {}, 60_000, trainer_name="ddp", devices=count)


def describe(device: torch.device) -> dict:
    from benchmarks.run import machine_info

    info = dict(device=str(device), torch=torch.__version__, python=platform.python_version(), cpu=machine_info()["cpu_model"])
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, gpus=torch.cuda.device_count(), cuda=torch.version.cuda)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:<i> or cpu")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, batch 100 only, small epochs")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "gpu_check.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible; use --device cpu", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 products, as the reported numbers need
    steps = 3 if args.quick else 50
    result = dict(machine=describe(device), quick=args.quick)
    result["parity"] = parity(device, 2 if args.quick else 20)
    modes = ["eager", "compiled", "reduce-overhead", "graph"] if device.type == "cuda" else (["eager"] if args.quick else ["eager", "compiled"])
    result["steps"] = step_times(device, [100] if args.quick else [100, 1000], steps, modes)
    images = 2_000 if args.quick else 60_000
    result["epochs"] = [lightning_epoch(device, m, o, images) for m, o in (("dcgmm2", {}), ("flat_gmm", {"K": 100}))]
    result["ddp"] = None if args.quick or device.type != "cuda" else ddp_epoch()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(format_result(result))
    return 0


def format_result(result: dict) -> str:
    m, p = result["machine"], result["parity"]
    lines = [f"device: {m.get('gpu', m['cpu'])} ({m['device']}), torch {m['torch']}",
             f"parity, {p['steps']} SGD steps of B, CPU vs device: max |diff| {p['max_abs_diff']:.2e} ({p['worst_parameter']}); last loss {p['last_loss']}",
             f"{'topology':<9}{'batch':>6}  {'mode':<9}{'ms/step':>9}{'images/s':>11}{'peak MiB':>10}"]
    for row in result["steps"]:
        if "error" in row:
            lines.append(f"{row['topology']:<9}{row['batch']:>6}  {row['mode']:<9}  failed: {row['error']}")
        else:
            peak = "" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
            lines.append(f"{row['topology']:<9}{row['batch']:>6}  {row['mode']:<9}{row['ms_per_step']:>9.2f}{row['images_per_s']:>11,.0f}{peak:>10}")
    for epoch in result["epochs"] + ([result["ddp"]] if result.get("ddp") else []):
        if "error" in epoch:
            lines.append(f"epoch {epoch['model']}: failed: {epoch['error']}")
        else:
            steps = f", of it steps {epoch['step_seconds']:.2f} s ({epoch['images_per_second']:,.0f} images/s)" if "step_seconds" in epoch else ""
            lines.append(f"epoch {epoch['model']} ({epoch['images']:,} images, {epoch['devices']} device(s)): fit {epoch['fit_seconds']:.2f} s{steps}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

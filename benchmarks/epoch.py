"""What an epoch costs outside its training steps, through ``train.py``'s own path.

    python -m benchmarks.run epoch [--epochs 4] [--threads 1] [-- OVERRIDE ...]

One fresh process composes ``conf/train.yaml`` with the overrides (none: the defaults a bare
``python train.py`` uses, i.e. the flat GMM K=25 on MNIST with validation, checkpoints, progress bar,
sample grids and the offline W&B logger), adds the :class:`~dcgmm.app.callbacks.TrainingSpeed`
callback and runs ``dcgmm.app.tasks.train`` without the test pass. An epoch's wall time runs from its
start to the next epoch's start (its steps, the loading of its batches, the validation after it,
checkpointing, every callback); its step time is the time inside the training steps (forward,
backward, SGD, from the ``on_train_batch_start`` to the ``on_train_batch_end`` of the timing
callback). The overhead is ``1 - steps / wall``, the median over the epochs after the first. The
fp32 GEMM speed of the same process is reported beside it, as for every training figure.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from benchmarks.common import gemm_gflops, machine_info, quiet_libraries, run_isolated

TARGET_OVERHEAD = 0.20  # at most this share of an epoch outside the steps, at the default settings


def measure_epochs(overrides: list[str], epochs: int, threads: int | None, data_dir: str) -> dict:
    """Train ``epochs`` epochs of ``python train.py <overrides>`` (no test pass) in this process."""
    import torch

    from dcgmm.app.callbacks import TrainingSpeed
    from dcgmm.app.config import compose
    from dcgmm.app.tasks import train

    quiet_libraries()
    with tempfile.TemporaryDirectory() as out:
        settings = [f"trainer.max_epochs={epochs}", "test=false", *([f"torch_threads={threads}"] if threads else [])]
        cfg = compose("train", [*settings, *overrides, "+callbacks.epoch_timing._target_=dcgmm.app.callbacks.TrainingSpeed"],
                      output_dir=out, data_dir=data_dir)
        _, objects = train(cfg)
        speed = next(cb for cb in objects["callbacks"] if isinstance(cb, TrainingSpeed))
        gemm = gemm_gflops()  # once, in the same process: the figure and the ratio built on it agree
        return dict(
            overrides=overrides,
            torch_threads=torch.get_num_threads(),
            train_steps_per_epoch=speed.train_steps // max(len(speed.epoch_seconds), 1),
            epoch_seconds=speed.epoch_seconds,
            epoch_step_seconds=speed.epoch_step_seconds,
            epoch_seconds_median=statistics.median(speed.later_epochs(speed.epoch_seconds)),
            epoch_step_seconds_median=statistics.median(speed.later_epochs(speed.epoch_step_seconds)),
            overhead=speed.overhead,
            gemm_gflops=gemm,
            train_images_per_s_per_gemm_gflops=speed.images_per_second / gemm,
        )


def add_epoch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=4, help="epochs to train (the first is not counted)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model.K=100 (after --)")


def run_epoch(args: argparse.Namespace) -> dict:
    if args.epochs < 1:
        raise SystemExit("error: --epochs must be at least 1")
    result = run_isolated(measure_epochs, overrides=list(args.overrides), epochs=args.epochs, threads=args.threads, data_dir=args.data_dir)
    target = {"value": result["overhead"], "bound": TARGET_OVERHEAD, "met": result["overhead"] < TARGET_OVERHEAD}
    return {"benchmark": "epoch", "machine": machine_info(), "result": result, "target": target}


def format_epoch(result: dict) -> str:
    m, r = result["machine"], result["result"]
    lines = [
        f"Epoch overhead on {m['cpu_model']}, {m['usable_cores']} cores, torch {m['versions']['torch']}, {m.get('date', '')}",
        f"python train.py {' '.join(r['overrides'])} ({r['train_steps_per_epoch']} steps per epoch, {r['torch_threads']} torch threads)",
        "",
        f"{'epoch':<7}{'wall s':>9}{'steps s':>9}{'outside':>9}",
    ]
    for e, (wall, steps) in enumerate(zip(r["epoch_seconds"], r["epoch_step_seconds"])):
        lines.append(f"{e:<7}{wall:>9.3f}{steps:>9.3f}{1 - steps / wall:>9.1%}")
    t = result["target"]
    lines += [
        "",
        f"median over the epochs after the first: wall {r['epoch_seconds_median']:.3f} s, steps {r['epoch_step_seconds_median']:.3f} s, "
        f"outside {r['overhead']:.1%} (bound {t['bound']:.0%}: {'met' if t['met'] else 'MISSED'})",
        f"fp32 GEMM {r['gemm_gflops']:.1f} GFLOP/s in the same process; training {r['train_images_per_s_per_gemm_gflops']:.1f} images/s per GEMM-GFLOP/s; "
        f"other cores busy {r['cpu_load']['other_cores']:.2f}",
    ]
    return "\n".join(lines)

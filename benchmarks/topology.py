"""Deep topologies: training and inference images/s, peak memory and where the time goes.

    python -m benchmarks.run topology [--models dcgmm2 dcgmm3 ...] [--steps 200] [--epochs 3]

Every model is measured in its own fresh process: ``epochs`` timed epochs of ``steps`` training
steps (batch 100) through ``DCGMMModule`` + ``lightning.Trainer``, forward-only inference on the
test set, the peak RSS, the operators that take the most time over 10 training steps, and the
time and speed of the step's matrix products and convolutions against their FLOP count (with the
ratio a step made of them alone would reach), and the layers' products timed alone in the same
process (:func:`benchmarks.products.time_products`, the formulations the layers run): a training
step through Lightning against them is the ``step_over_products`` ratio, the figure the targets
(:data:`TARGETS`) bound.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.common import build_module, epoch_timer, gemm_gflops, load_images, machine_info, peak_rss_mib, quiet_libraries, run_isolated
from benchmarks.products import time_products

TOPOLOGIES = ("flat_gmm", "dcgmm2", "dcgmm2_pool", "dcgmm3", "dcgmm3_pool", "dcgmm4", "dcgmm4_pool")
# what the project asks of a training step through Lightning at the default settings: at most 1.3x
# the time of the step's matrix products alone (timed in the same process), and a bounded peak RSS
TARGETS = {
    "dcgmm2": {"step_over_products": 1.3, "peak_rss_training_mib": 900.0},
    "dcgmm3": {"step_over_products": 1.3, "peak_rss_training_mib": 1228.8},
}




# the matrix products and convolutions among the operators a training step dispatches (forward and backward)
PRODUCT_OPS = frozenset({"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.convolution", "aten.convolution_backward"})


def profile_steps(module, batch, steps: int = 10, top: int = 8) -> dict:
    """Where a training step's time goes, over ``steps`` steps (forward, backward, SGD).

    Each operator the step dispatches is timed on its own (a ``TorchDispatchMode`` reads the clock
    around it, so the time is the operator's, nested calls included, without the Python between
    operators). On a 2-core AMD EPYC this clock gave B's products 13.5-13.8 ms per step in two
    rounds where ``torch.profiler`` in the same process gave 14.3 and 18.3 ms.

    Returns the ``top`` operators (``ops``), the plain step time without the timing
    (``seconds_per_step``), and the matrix products' and convolutions' time per step and share of
    the plain step (``products_seconds_per_step``, ``products_share``)."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    from dcgmm.app.module import plain_sgd_step

    class OperatorClock(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: collections.Counter = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            start = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            self.seconds[str(func.overloadpacket)] += time.perf_counter() - start
            return out

    optimizer = module.configure_optimizers()
    x, y = batch
    plain_sgd_step(module, optimizer, x, y)
    start = time.perf_counter()
    for _ in range(steps):
        plain_sgd_step(module, optimizer, x, y)
    plain = (time.perf_counter() - start) / steps
    clock = OperatorClock()
    with clock:
        for _ in range(steps):
            plain_sgd_step(module, optimizer, x, y)
    products = sum(t for op, t in clock.seconds.items() if op in PRODUCT_OPS) / steps
    return {
        "ops": [
            {"op": op, "share": t / steps / plain, "ms_per_step": 1000 * t / steps}
            for op, t in clock.seconds.most_common(top)
        ],
        "seconds_per_step": plain,
        "products_seconds_per_step": products,
        "products_share": products / plain,
    }


def product_flops_per_image(stack) -> int:
    """FLOPs of a training step's matrix products and convolutions, per image: every learning
    layer's forward products and as many again for its parameters' gradients (inputs are detached:
    no input gradients), plus the smoothing product ``P K^2`` of every GMM layer that smooths now.
    ``1e9 / this`` is the images/s per GEMM-GFLOP/s of a step made of these products alone, each
    running at the machine's GEMM speed: a ceiling for the ratio the benchmark reports."""
    from dcgmm.core.layers.smoothing import is_identity_width

    flops = 0
    for layer, row in zip(stack.layers, stack.summary()):
        if layer.learns:
            flops += 2 * 2 * row["macs"]  # 2 FLOPs per multiply-add, forward and parameter gradient
        if layer.is_density and getattr(layer, "annealable", False) and not is_identity_width(layer.sigma):
            flops += 2 * layer.P * layer.K * layer.K
    return flops


def measure_topology(name: str, steps: int, epochs: int, dataset: str, data_dir: str, batch_size: int, seed: int, threads: int | None,
                     product_rounds: int = 5) -> dict:
    """Train / infer / profile one topology (runs in its own process)."""
    import lightning as L
    import torch

    from dcgmm.training.runtime import flush_denormals

    quiet_libraries()
    if threads:
        torch.set_num_threads(threads)
    flush_denormals()
    L.seed_everything(seed, verbose=False)
    datamodule = load_images(dataset, data_dir, batch_size)
    module = build_module(name)
    rss_setup = peak_rss_mib()

    timer = epoch_timer()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, limit_train_batches=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer],
    )
    trainer.fit(module, datamodule=datamodule)
    rates = [steps * batch_size / s for s in timer.seconds]
    rss_train = peak_rss_mib()

    test_x = datamodule.dataset("test").x
    module.eval()
    inference = []
    with torch.no_grad():
        for _ in range(2):
            start = time.perf_counter()
            for i in range(0, len(test_x), 1000):
                module.stack.bottom_up(test_x[i : i + 1000])
            inference.append(len(test_x) / (time.perf_counter() - start))
    module.train()
    train_x, train_y = datamodule.dataset("train").x[:batch_size], datamodule.dataset("train").y[:batch_size]
    profile = profile_steps(module, (train_x, train_y))
    flops = product_flops_per_image(module.stack)  # sigma as training left it, as in the profiled steps
    gemm = gemm_gflops()  # the machine's own yardstick, in the same process and conditions
    # the floor: the layers' products alone, each in the formulation the layer runs (benchmarks.products)
    products = time_products(module, batch_size, rounds=product_rounds, repeats=10, seed=seed)
    step_seconds = batch_size / statistics.median(rates)
    return {
        "gemm_gflops": gemm,
        "train_images_per_s_per_gemm_gflops": statistics.median(rates) / gemm,
        "model": name,
        "parameters": sum(p.numel() for p in module.parameters()),
        "macs_per_image": sum(row["macs"] for row in module.stack.summary()),
        "torch_threads": torch.get_num_threads(),
        "epoch_seconds": timer.seconds,
        "train_images_per_s_median": statistics.median(rates),
        "train_images_per_s_best": max(rates),
        "epoch_60k_seconds_median": 60000 / statistics.median(rates),
        "inference_images_per_s": max(inference),
        "rss_after_setup_mib": rss_setup,
        "peak_rss_training_mib": rss_train,
        "peak_rss_mib": peak_rss_mib(),
        "profile": profile,
        "product_flops_per_image": flops,
        "ratio_ceiling": 1e9 / flops,  # images/s per GEMM-GFLOP/s if the step were its products at GEMM speed
        # the products' own speed in the timed steps, GFLOP/s
        "products_gflops": flops * batch_size / profile["products_seconds_per_step"] / 1e9,
        "products_alone_seconds": products["products_seconds_own"],
        "products_alone_layers": products["layers"],
        "step_seconds": step_seconds,  # a training step through Lightning (median epoch)
        "step_over_products": step_seconds / products["products_seconds_own"],
        "plain_step_over_products": profile["seconds_per_step"] / products["products_seconds_own"],
    }




def add_topology_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=["dcgmm2", "dcgmm3", "dcgmm4_pool"], choices=TOPOLOGIES)
    parser.add_argument("--steps", type=int, default=200, help="training steps per timed epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (the median is reported)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--product-rounds", type=int, default=5, help="rounds of the products timed alone (the median is used)")


def run_topology(args: argparse.Namespace) -> dict:
    results = []
    for name in args.models:
        results.append(
            run_isolated(
                measure_topology, name=name, steps=args.steps, epochs=args.epochs, dataset=args.dataset,
                data_dir=args.data_dir, batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                product_rounds=args.product_rounds,
            )
        )
    targets = {}
    for r in results:
        for key, bound in TARGETS.get(r["model"], {}).items():
            value = r[key]
            met = value <= bound
            targets[f"{r['model']}/{key}"] = {"value": value, "bound": bound, "met": met}
    return {"benchmark": "topology", "machine": machine_info(), "results": results, "targets": targets}


def format_topology(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Topology benchmark on {m['cpu_model']}, {m['usable_cores']} cores, torch {m['versions']['torch']}, {m.get('date', '')}",
        "",
        f"{'model':<13}{'params':>10}{'MACs/img':>12}{'train img/s':>13}{'per GEMM GF/s':>15}{'60k epoch s':>13}{'infer img/s':>13}{'peak RSS MiB':>14}{'other cores':>13}",
    ]
    for r in result["results"]:
        lines.append(
            f"{r['model']:<13}{r['parameters']:>10,}{r['macs_per_image']:>12,}{r['train_images_per_s_median']:>13,.0f}"
            f"{r['train_images_per_s_per_gemm_gflops']:>15.1f}{r['epoch_60k_seconds_median']:>13.1f}{r['inference_images_per_s']:>13,.0f}{r['peak_rss_mib']:>14,.0f}"
            f"{r['cpu_load']['other_cores']:>13.2f}"
        )
    for r in result["results"]:
        lines += ["", f"where the time goes, {r['model']} (time inside each operator over 10 training steps, against a plain step of {1000 * r['profile']['seconds_per_step']:.1f} ms):"]
        for p in r["profile"]["ops"]:
            lines.append(f"  {p['op']:<40}{100 * p['share']:>6.1f} %{p['ms_per_step']:>9.2f} ms/step")
        lines.append(
            f"  matrix products and convolutions: {100 * r['profile']['products_share']:.0f} % of the step, "
            f"{r['product_flops_per_image'] / 1e6:.2f} MFLOP per image at {r['products_gflops']:.0f} GFLOP/s "
            f"(GEMM {r['gemm_gflops']:.0f}); made of them alone at GEMM speed, the step would give "
            f"{r['ratio_ceiling']:.0f} images/s per GEMM-GFLOP/s"
        )
        lines.append(
            f"  step / products: {1000 * r['step_seconds']:.1f} ms per step through Lightning against "
            f"{1000 * r['products_alone_seconds']:.1f} ms of the layers' products timed alone: "
            f"{r['step_over_products']:.2f} ({r['plain_step_over_products']:.2f} for the plain step)"
        )
    if result["targets"]:
        lines += ["", "Targets"]
        for name, t in result["targets"].items():
            lines.append(f"  {name:<34}{t['value']:>10,.2f}  bound {t['bound']:,.2f}  {'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)

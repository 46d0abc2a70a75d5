"""What a training step costs beyond its matrix products, and what was measured against it.

    python -m benchmarks.run floor [--models dcgmm2 dcgmm3] [--threads 1] [--rounds 5] [--json PATH]

Per topology, in one fresh process, with every annealed layer at the width it starts with (it
smooths, as in :mod:`benchmarks.products`), from random 8-bit images:

``products``
    the layers' products alone in the formulations the layers run
    (:func:`benchmarks.products.time_products`): the floor of the ``step / products`` ratio.
``step``
    the plain training step (:func:`dcgmm.app.module.plain_sgd_step`: forward, layer losses,
    backward, SGD, clipping) at the batch size (default 100).
``fixed``
    the same step at batch size 1: what a step costs whatever its size (operator dispatch,
    autograd's graph, the Python between operators, the passes over the parameters: score weights
    and their gradients, SGD update, clipping; the products of one image are a hundredth of
    ``products``), and ``ops``, the operators one step dispatches. ``(products + fixed) / products``
    is the ratio a step would reach if all of its work but the products and this fixed cost vanished.
``compiled``
    the step with its bottom-up pass through ``torch.compile`` (inductor; its backward is compiled
    too), as ``model.compile=true`` trains, the compile time, and per parameter how far one step's update is
    from the eager step's (``max |compiled - eager| / max |eager|``).
``score_pass`` (each GMM layer that convolves its folding's input)
    the layer's scores, responsibilities, max-component objective and the backward to its
    parameters, ``shipped`` as the layer runs them (channels-last convolution, scores ``(N, P, K)``
    with K innermost) and ``k_major`` (the convolution writes ``(N, K, P)``, so that the softmax
    and the max reduce over an outer dimension; the objective's backward is the same weighted
    gather, as a scatter along K), whole and split into the convolution and the reductions, with
    the largest relative difference of the parameter gradients and of the score gradients (a
    launch stops above :data:`benchmarks.products.TOLERANCE`).

Rounds alternate the variants; each figure is the median over rounds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from benchmarks.common import build_module, gemm_gflops, machine_info, quiet_libraries
from benchmarks.products import (
    add_products_arguments,
    layer_inputs,
    per_model,
    relative_difference,
    require_agreement,
    time_formulations,
    time_products,
)


def count_ops(step: Callable[[], object]) -> int:
    """The number of ATen operators one call of ``step`` dispatches (forward, backward, update)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            return func(*args, **(kwargs or {}))

    counter = Counter()
    with counter:
        step()
    return counter.count


def k_major_scores(layer, fold, x):
    """``layer.log_scores_of_patches(x, fold)`` with the convolution in the default (``N, K, H, W``)
    memory format: the scores as ``(N, K, P)``, contiguous (K the outer dimension). ``x`` is taken
    in the default memory format (a K-major network hands its maps on in it)."""
    import torch
    import torch.nn.functional as F

    from dcgmm.core.layers.gmm import SEPARATE_FROM

    (kh, kw), channels = fold.kernel_size, x.shape[1]
    quad, lin, bias = layer.score_weights()
    dense = torch.contiguous_format  # explicit: with one channel, a permuted kernel can pass for channels last

    def kernel(weight):  # (1, K, D), D in (i, j, c) order -> (K, C, kh, kw)
        return weight.view(layer.K, kh, kw, channels).permute(0, 3, 1, 2).contiguous(memory_format=dense)

    if channels < SEPARATE_FROM:
        stacked = torch.cat((x * x, x), dim=1).contiguous(memory_format=dense)
        weights = torch.cat((kernel(quad), kernel(lin)), dim=1).contiguous(memory_format=dense)
        scores = F.conv2d(stacked, weights, bias.view(layer.K), stride=fold.stride)
    else:
        scores = F.conv2d(x * x, kernel(quad), bias.view(layer.K), stride=fold.stride)
        scores = scores.add_(F.conv2d(x, kernel(lin), stride=fold.stride))
    return scores.reshape(x.shape[0], layer.K, layer.P)


def k_major_max():
    """An autograd function for the max-component objective of K-major scores ``(N, K, P)``,
    ``mean_p max_k sum_j g_kj l_jp`` (``kernel`` ``g`` or ``None`` for the identity), with the backward
    of :class:`dcgmm.core.layers.gmm.SmoothedMax` in that layout: at each position row ``winner`` of
    ``g`` times the image's gradient over ``P``, formed by a scatter of the scaled one-hot winners
    along K and, when the layer smooths, one ``g^T`` product. (Built on call: the benchmarks import
    torch only inside their measurements.)"""
    import torch

    class KMajorMax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, scores, kernel):
            smoothed = scores if kernel is None else torch.matmul(kernel, scores)
            values, winner = smoothed.max(dim=1)  # (N, P)
            ctx.save_for_backward(winner, kernel)
            ctx.components = scores.shape[1]
            return values.mean(dim=1)

        @staticmethod
        def backward(ctx, grad):
            winner, kernel = ctx.saved_tensors
            n, positions = winner.shape
            scale = (grad / positions).view(n, 1, 1).expand(n, 1, positions)
            rows = grad.new_zeros(n, ctx.components, positions).scatter_(1, winner.unsqueeze(1), scale)
            return (rows if kernel is None else torch.matmul(kernel.t(), rows)), None

    return KMajorMax


def score_pass_variants(layer, fold, x) -> dict[str, dict[str, Callable]]:
    """The score pass of a convolving GMM layer in both layouts, whole and in its two parts.

    ``pass``: scores, responsibilities and the backward of ``-mean(objective)`` to the parameters;
    each returns the gradients of the layer's means and inverse standard deviations.
    ``convolution``: the scores and their backward to the parameters for a fixed gradient.
    ``reductions``: responsibilities, objective and the gradient of the scores, from fixed scores.
    ``shipped`` is the layer's own code (channels last, ``(N, P, K)``); ``k_major`` the same in
    ``(N, K, P)`` (:func:`k_major_scores`, :func:`k_major_max`). ``x`` is the layer's input as the
    layer gets it; the K-major variants take it in the default memory format, converted once."""
    import torch

    kernel = None if layer._smoothing_is_identity else layer.smoothing
    k_max = k_major_max()
    x_dense = x.contiguous()

    def gradients():
        return layer.means.grad.clone(), layer.inv_std.grad.clone()

    def shipped_pass():
        layer.zero_grad(set_to_none=True)
        scores = layer.log_scores_of_patches(x, fold)  # (N, P, K), K innermost
        layer.responsibilities(scores.detach())
        (-layer.objective(scores).mean()).backward()
        return gradients()

    def k_major_pass():
        layer.zero_grad(set_to_none=True)
        scores = k_major_scores(layer, fold, x_dense)  # (N, K, P)
        torch.softmax(scores.detach(), dim=1)
        (-k_max.apply(scores, kernel).mean()).backward()
        return gradients()

    with torch.no_grad():
        fixed = layer.log_scores_of_patches(x, fold)  # (N, P, K)
    grad_pk = torch.randn_like(fixed)
    grad_kp = grad_pk.transpose(1, 2).contiguous()
    scores_pk, scores_kp = fixed.clone(), fixed.transpose(1, 2).contiguous()

    def shipped_convolution():
        layer.zero_grad(set_to_none=True)
        layer.log_scores_of_patches(x, fold).backward(grad_pk)

    def k_major_convolution():
        layer.zero_grad(set_to_none=True)
        k_major_scores(layer, fold, x_dense).backward(grad_kp)

    def shipped_reductions():
        scores = scores_pk.detach().requires_grad_()
        layer.responsibilities(scores.detach())
        (-layer.objective(scores).mean()).backward()
        return scores.grad

    def k_major_reductions():
        scores = scores_kp.detach().requires_grad_()
        torch.softmax(scores.detach(), dim=1)
        (-k_max.apply(scores, kernel).mean()).backward()
        return scores.grad

    return {
        "pass": {"shipped": shipped_pass, "k_major": k_major_pass},
        "convolution": {"shipped": shipped_convolution, "k_major": k_major_convolution},
        "reductions": {"shipped": shipped_reductions, "k_major": k_major_reductions},
    }


def measure_floor(name: str, batch_size: int, rounds: int, repeats: int, threads: int | None, seed: int, compile: bool = True) -> dict:
    """All figures of one topology (runs in its own process)."""
    import copy

    import torch

    from dcgmm.app.module import plain_sgd_step
    from dcgmm.training.runtime import flush_denormals, keep_freed_memory
    from dcgmm.training.step import sgd_step

    quiet_libraries()
    keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    flush_denormals()
    torch.manual_seed(seed)
    module = build_module(name)
    stack = module.stack
    gemm = gemm_gflops()
    products = time_products(module, batch_size, rounds, repeats, seed)  # also sets each annealed layer's starting width
    generator = torch.Generator().manual_seed(seed)

    def images(n):
        return torch.randint(0, 256, (n, *stack.input_shape), generator=generator).float() / 255, torch.randint(0, 10, (n,), generator=generator)

    x, y = images(batch_size)
    x1, y1 = images(1)
    optimizer = module.configure_optimizers()

    compiled_pass = torch.compile(stack.bottom_up, dynamic=False) if compile else None  # what model.compile=true runs

    def compiled_step():
        sgd_step(stack, optimizer, x, y, bottom_up=compiled_pass)

    state = copy.deepcopy(stack.state_dict())
    variants = {"step": lambda: plain_sgd_step(module, optimizer, x, y), "fixed": lambda: plain_sgd_step(module, optimizer, x1, y1)}
    compiled = {}
    if compile:
        start = time.perf_counter()
        compiled_step()
        compiled["compile_seconds"] = time.perf_counter() - start
        before = {name: state[name] for name, _ in stack.named_parameters()}  # where both steps start
        updates = {}
        for variant, run in (("eager", variants["step"]), ("compiled", compiled_step)):
            stack.load_state_dict(state)
            run()
            updates[variant] = {name: p.detach() - before[name] for name, p in stack.named_parameters()}
        differences = {name: relative_difference(updates["compiled"][name], update) for name, update in updates["eager"].items()}
        worst = max(differences, key=differences.get)
        compiled["compiled_update_difference"] = differences  # per parameter: max |compiled - eager| / max |eager| of one step's update
        compiled["compiled_worst_parameter"] = worst
        stack.load_state_dict(state)
        variants["compiled"] = compiled_step

    ops, ops_fixed = count_ops(variants["step"]), count_ops(variants["fixed"])
    steps = time_formulations(variants, rounds, repeats)
    if compile:
        compiled["compiled_step_seconds"] = steps["compiled"]
        compiled["compiled_over_products"] = steps["compiled"] / products["products_seconds_own"]

    passes = []
    stack.load_state_dict(state)
    for index, (inp, fold) in sorted(layer_inputs(stack, x).items()):
        layer = stack.layers[index]
        if fold is None or not layer.convolves(fold):
            continue
        parts = score_pass_variants(layer, fold, inp)
        shipped = parts["pass"]["shipped"]()
        k_major = parts["pass"]["k_major"]()
        reductions = (parts["reductions"]["shipped"](), parts["reductions"]["k_major"]().transpose(1, 2))
        passes.append({
            "layer": index, "K": layer.K, "P": layer.P, "D": layer.D,
            "relative_difference": max(relative_difference(k, s) for k, s in zip(k_major, shipped)),  # parameter gradients
            "score_gradient_difference": relative_difference(reductions[1], reductions[0]),
            "seconds": {part: time_formulations(variants_, rounds, repeats) for part, variants_ in parts.items()},
        })

    floor = products["products_seconds_own"]
    return {
        "model": name,
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "gemm_gflops": gemm,
        "products_seconds": floor,
        "step_seconds": steps["step"],
        "fixed_seconds": steps["fixed"],
        "ops_per_step": ops,
        "ops_per_step_batch_1": ops_fixed,
        "step_over_products": steps["step"] / floor,
        **compiled,
        "fixed_floor_ratio": (floor + steps["fixed"]) / floor,
        "score_pass": passes,
    }


# ----------------------------------------------------------------------------- command line
def add_floor_arguments(parser: argparse.ArgumentParser) -> None:
    add_products_arguments(parser, rounds=5)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the compiled step (no inductor build)")


def run_floor(args: argparse.Namespace) -> dict:
    results = per_model(measure_floor, args, compile=args.compile)
    for result in results:  # the two layouts must compute the same numbers
        for row in result["score_pass"]:
            require_agreement(max(row["relative_difference"], row["score_gradient_difference"]),
                              f"{result['model']} layer {row['layer']}: the K-major and the layer's own score pass")
    return {"benchmark": "floor", "machine": machine_info(), "results": results}


def format_floor(result: dict) -> str:
    m = result["machine"]
    lines = [f"A training step against its products on {m['cpu_model']}, {m['usable_cores']} cores, torch {m['versions']['torch']}, {m.get('date', '')}"]
    for r in result["results"]:
        ms = {key: 1000 * r[key] for key in ("products_seconds", "step_seconds", "fixed_seconds", "compiled_step_seconds") if key in r}
        lines += [
            "",
            f"{r['model']} (batch {r['batch_size']}, {r['torch_threads']} thread(s), fp32 GEMM {r['gemm_gflops']:.0f} GFLOP/s, "
            f"other cores busy {r['cpu_load']['other_cores']:.2f})",
            f"  products alone {ms['products_seconds']:.2f} ms; plain step {ms['step_seconds']:.2f} ms (step / products {r['step_over_products']:.2f}), "
            f"{r['ops_per_step']} operators",
            f"  fixed cost (the step at batch 1, {r['ops_per_step_batch_1']} operators) {ms['fixed_seconds']:.2f} ms: "
            f"(products + fixed) / products = {r['fixed_floor_ratio']:.2f}",
        ]
        if "compiled_step_seconds" in r:
            worst = r["compiled_worst_parameter"]
            lines.append(
                f"  compiled bottom-up pass {ms['compiled_step_seconds']:.2f} ms (step / products {r['compiled_over_products']:.2f}; "
                f"compile {r['compile_seconds']:.0f} s; one step's update differs from eager by up to "
                f"{r['compiled_update_difference'][worst]:.1e}, in {worst})"
            )
        for row in r["score_pass"]:
            s = row["seconds"]
            lines.append(
                f"  layer {row['layer']} (K={row['K']}, P={row['P']}, D={row['D']}), shipped / K-major: whole pass "
                f"{1000 * s['pass']['shipped']:.2f} / {1000 * s['pass']['k_major']:.2f} ms, convolution "
                f"{1000 * s['convolution']['shipped']:.2f} / {1000 * s['convolution']['k_major']:.2f} ms, reductions "
                f"{1000 * s['reductions']['shipped']:.2f} / {1000 * s['reductions']['k_major']:.2f} ms "
                f"(gradients differ by {row['relative_difference']:.1e}, score gradients by {row['score_gradient_difference']:.1e})"
            )
    return "\n".join(lines)

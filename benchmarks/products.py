"""Every GMM layer's matrix products, timed alone in each formulation that gives the same numbers.

    python -m benchmarks.run products [--models dcgmm2 dcgmm3] [--threads 1] [--rounds 7] [--json PATH]

A training step of a GMM layer runs two kinds of products: the log-scores (forward) with the
gradient of the parameters (backward), and, while the layer anneals, the smoothing product
``scores @ g^T``. This benchmark takes each shared-mode GMM layer of a topology at the input it
receives from a batch of random 8-bit images (MNIST-shaped) passed through the stack, and times
these products alone, in the layer's own formulation and in the others that compute the same
numbers (checked here to float32 rounding; their largest relative difference is recorded):

``convolution`` (a layer above a folding with fewer than ``SEPARATE_FROM`` input channels: what the layer runs)
    ``conv([x*x, x], [-s^2/2, mu*s^2])`` (oneDNN, channels last) and its weight gradient.
``two_convolutions`` (a layer above a folding with more channels: what the layer runs)
    ``conv(x*x, -s^2/2) + conv(x, mu*s^2)`` and their weight gradients: no stacked copy of the input.
``space_to_depth`` (stride > 1 dividing the kernel)
    the same as a stride-1 convolution of the input regrouped into ``stride x stride`` blocks
    (more channels, a smaller kernel).
``patches``
    the patches cut (``unfold``), then one matrix product and its gradient.
``sparse_gradient``
    the forward by convolution; the weight gradient from the structure of the max-component
    objective's gradient (row ``g[winner]`` of the smoothing kernel per position): the patches
    summed per winning component (``index_add``), then one ``K x K`` product with ``g``.
``addmm`` (a layer whose input is a map of rows, e.g. a flat GMM; what the layer runs)
    ``(x*x) @ (-s^2/2)^T + x @ (mu*s^2)^T + b`` and autograd's gradient.
``transposed``
    the same products with the output transposed, ``(-s^2/2) @ (x*x)^T + ...`` (other GEMM shapes).
``sparse_gradient`` (rows)
    as above, without patches: the rows summed per winning component.

and for the smoothing product ``full`` (one ``(M, K) x (K, K)`` product, what the layer runs)
against ``separable`` (the toroidal Gaussian kernel is ``a (x) a`` with ``a`` of side
``sqrt(K)``: two ``(M sqrt(K), sqrt(K))`` products and a transpose).

Rounds alternate the formulations; each figure is the median over rounds. Per topology the
report sums the layers' products in the layers' formulations and in the fastest of each, and turns
the sum into the images/s per GEMM-GFLOP/s (the fp32 GEMM of the same process) that a training step
made of nothing but these products would give: a ceiling for the ratio the topology benchmark
measures. The classifier's product (under 1 % of the FLOPs of these topologies) is left out.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

from benchmarks.common import build_module, gemm_gflops, machine_info, quiet_libraries, run_isolated

TOLERANCE = 1e-4  # largest relative difference accepted between two formulations (float32 rounding)


# ----------------------------------------------------------------------------- the problems
def layer_inputs(stack, x) -> dict:
    """``{layer index: (input, folding or None)}`` of every GMM layer in one bottom-up pass of ``x``:
    the folding's input for a layer that absorbs its folding (``bottom_up_through``), else the
    layer's own input map."""
    import torch

    seen: dict = {}
    for layer in stack.gmm_layers:

        def through(inp, below, detach=True, layer=layer, run=layer.bottom_up_through):
            seen[layer.index] = (inp.detach(), below)
            return run(inp, below, detach)

        def plain(inp, detach=True, layer=layer, run=layer.bottom_up):
            seen[layer.index] = (inp.detach(), None)
            return run(inp, detach)

        layer.bottom_up_through, layer.bottom_up = through, plain  # instance attributes shadow the methods
    try:
        with torch.no_grad():
            stack.bottom_up(x)
    finally:
        for layer in stack.gmm_layers:
            del layer.bottom_up_through, layer.bottom_up
    return seen


def score_gradient(scores, kernel):
    """The gradient of minus the mean max-component objective with respect to the scores
    ``(N, P, K)``: ``-g[winner] / (N P)`` per position; returns it with ``winner`` ``(N*P,)`` and the
    per-position weight ``(N*P,)``."""
    import torch

    n, positions, k = scores.shape
    winner = (scores.reshape(-1, k) @ kernel.t()).argmax(dim=-1)  # (N*P,)
    weight = torch.full((n * positions,), -1.0 / (n * positions))
    return (kernel[winner] * weight[:, None]).view(n, positions, k), winner, weight


def separable_factor(layer):
    """``a`` of side ``sqrt(K)`` with ``layer.smoothing == kron(a, a)`` (the toroidal Gaussian)."""
    import torch

    from dcgmm.core.layers.smoothing import grid_side

    side = grid_side(layer.K)
    d = torch.arange(side)
    d = (d[:, None] - d[None, :]).abs()
    d = torch.minimum(d, side - d).to(torch.float64)
    a = torch.exp(-d * d / (2.0 * layer.sigma**2))
    return (a / a.sum(dim=1, keepdim=True)).to(torch.float32)  # (side, side)


def conv_formulations(layer, fold, x, kernel) -> tuple[dict[str, Callable], float]:
    """Formulations of the log-scores and weight gradient of a GMM layer above ``fold`` whose input is
    ``x (N, C, H, W)``; each returns ``(scores (N, P, K), weight gradient (K, 2C, kh, kw))``. Also the
    layer's FLOPs for one pass of them (forward and weight gradient)."""
    import torch
    import torch.nn.functional as F

    cl = torch.channels_last
    (kh, kw), (sh, sw) = fold.kernel_size, fold.stride
    n, channels = x.shape[:2]
    with torch.no_grad():
        s2 = layer.inv_std.view(layer.K, -1) ** 2
        weight = torch.stack((-0.5 * s2, layer.means.view(layer.K, -1) * s2), dim=1)  # (K, 2, D), D in (i, j, c)
        weight = weight.view(layer.K, 2, kh, kw, channels).permute(0, 1, 4, 2, 3).reshape(layer.K, 2 * channels, kh, kw)
        weight = weight.contiguous(memory_format=cl)  # (K, 2C, kh, kw)
        bias = layer.score_weights()[2].view(layer.K)
        stacked = torch.cat((x * x, x), dim=1).contiguous(memory_format=cl)  # (N, 2C, H, W)
        scores = F.conv2d(stacked, weight, bias, stride=(sh, sw))  # (N, K, H', W')
    out_h, out_w = scores.shape[2:]
    positions = out_h * out_w
    grad, winner, row_weight = score_gradient(scores.permute(0, 2, 3, 1).reshape(n, positions, layer.K), kernel)
    grad_map = grad.view(n, out_h, out_w, layer.K).permute(0, 3, 1, 2)  # (N, K, H', W'), channels-last memory

    def as_scores(out):  # (N, K, H', W') -> (N, P, K)
        return out.permute(0, 2, 3, 1).reshape(n, positions, layer.K)

    def convolution():
        w = weight.detach().requires_grad_()
        out = F.conv2d(stacked, w, bias, stride=(sh, sw))
        out.backward(grad_map)
        return as_scores(out.detach()), w.grad

    def patches():
        w = weight.detach().requires_grad_()
        cols = F.unfold(stacked, (kh, kw), stride=(sh, sw))  # (N, 2C*kh*kw, P), (c, i, j) order
        out = torch.matmul(w.reshape(layer.K, -1), cols) + bias[:, None]  # (N, K, P)
        out.backward(grad.transpose(1, 2))
        return out.detach().transpose(1, 2), w.grad

    def sparse_gradient():
        with torch.no_grad():
            out = F.conv2d(stacked, weight, bias, stride=(sh, sw))
            cols = F.unfold(stacked, (kh, kw), stride=(sh, sw)).transpose(1, 2).reshape(n * positions, -1)  # (N*P, 2C*kh*kw)
            sums = torch.zeros(layer.K, cols.shape[1]).index_add_(0, winner, cols * row_weight[:, None])  # (K, 2C*kh*kw)
            return as_scores(out), (kernel.t() @ sums).view_as(weight)

    squares, rows_cl = (x * x).contiguous(memory_format=cl), x.contiguous(memory_format=cl)

    def two_convolutions():
        quad, lin = (weight[:, part].detach().contiguous(memory_format=cl).requires_grad_() for part in (slice(0, channels), slice(channels, None)))
        out = F.conv2d(squares, quad, bias, stride=(sh, sw)) + F.conv2d(rows_cl, lin, stride=(sh, sw))
        out.backward(grad_map)
        return as_scores(out.detach()), torch.cat((quad.grad, lin.grad), dim=1)

    found = {"convolution": convolution, "two_convolutions": two_convolutions, "patches": patches, "sparse_gradient": sparse_gradient}
    if (sh, sw) != (1, 1) and kh % sh == 0 and kw % sw == 0:
        rows, cols_ = sh * (out_h - 1) + kh, sw * (out_w - 1) + kw  # the input the patches cover

        def space_to_depth():
            w = weight.detach().requires_grad_()
            blocks = stacked[:, :, :rows, :cols_].reshape(n, 2 * channels, rows // sh, sh, cols_ // sw, sw)
            blocks = blocks.permute(0, 1, 3, 5, 2, 4).reshape(n, 2 * channels * sh * sw, rows // sh, cols_ // sw)
            kernel_blocks = w.view(layer.K, 2 * channels, kh // sh, sh, kw // sw, sw).permute(0, 1, 3, 5, 2, 4)
            kernel_blocks = kernel_blocks.reshape(layer.K, 2 * channels * sh * sw, kh // sh, kw // sw)
            out = F.conv2d(blocks.contiguous(memory_format=cl), kernel_blocks.contiguous(memory_format=cl), bias)
            out.backward(grad_map)
            return as_scores(out.detach()), w.grad

        found["space_to_depth"] = space_to_depth
    flops = 2 * 2 * n * layer.macs_per_image()  # forward and weight gradient, 2 FLOPs per multiply-add
    return found, flops


def row_formulations(layer, x, kernel) -> tuple[dict[str, Callable], float]:
    """Formulations of the log-scores and parameter-term gradients of a shared GMM layer over the
    rows of its input ``x (N, D, H, W)``; each returns ``(scores (N, P, K), gradient (2, K, D))``."""
    import torch

    n = x.shape[0]
    rows = x.reshape(n, layer.D, layer.P).transpose(1, 2).reshape(n * layer.P, layer.D).contiguous()  # (M, D)
    squares = rows * rows
    with torch.no_grad():
        s2 = layer.inv_std.view(layer.K, -1) ** 2
        terms = torch.stack((-0.5 * s2, layer.means.view(layer.K, -1) * s2))  # (2, K, D): quadratic, linear
        bias = layer.score_weights()[2].view(layer.K)
        scores = torch.addmm(torch.addmm(bias, squares, terms[0].t()), rows, terms[1].t()).view(n, layer.P, layer.K)
    grad, winner, row_weight = score_gradient(scores, kernel)
    grad_rows = grad.view(-1, layer.K)  # (M, K)

    def addmm():
        quad, lin = (t.detach().requires_grad_() for t in terms)
        out = torch.addmm(torch.addmm(bias, squares, quad.t()), rows, lin.t())  # (M, K)
        out.backward(grad_rows)
        return out.detach().view(n, layer.P, layer.K), torch.stack((quad.grad, lin.grad))

    def transposed():
        quad, lin = (t.detach().requires_grad_() for t in terms)
        out = torch.addmm(torch.addmm(bias[:, None], quad, squares.t()), lin, rows.t())  # (K, M)
        out.backward(grad_rows.t())
        return out.detach().t().reshape(n, layer.P, layer.K), torch.stack((quad.grad, lin.grad))

    def sparse_gradient():
        with torch.no_grad():
            out = torch.addmm(torch.addmm(bias, squares, terms[0].t()), rows, terms[1].t())
            both = torch.cat((squares, rows), dim=1) * row_weight[:, None]  # (M, 2D)
            sums = torch.zeros(layer.K, 2 * layer.D).index_add_(0, winner, both)  # (K, 2D)
            gradient = (kernel.t() @ sums).view(layer.K, 2, layer.D).transpose(0, 1)
            return out.view(n, layer.P, layer.K), gradient

    flops = 2 * 2 * n * layer.macs_per_image()
    return {"addmm": addmm, "transposed": transposed, "sparse_gradient": sparse_gradient}, flops


def smoothing_formulations(layer, scores) -> dict[str, Callable]:
    """The smoothing product of scores ``(M, K)`` with the layer's kernel: full and separable."""
    side = math.isqrt(layer.K)
    a = separable_factor(layer)
    m = scores.shape[0]

    def full():
        return scores @ layer.smoothing.t()  # (M, K)

    def separable():
        inner = (scores.view(m * side, side) @ a.t()).view(m, side, side).transpose(1, 2).contiguous()  # (M, c, r')
        outer = (inner.view(m * side, side) @ a.t()).view(m, side, side)  # (M, c, r)
        return outer.transpose(1, 2).reshape(m, layer.K)

    return {"full": full, "separable": separable}


def relative_difference(a, b) -> float:
    """``max |a - b| / max |b|`` over every tensor of two results (a tensor or a tuple of them)."""
    pairs = zip(a, b) if isinstance(a, tuple) else [(a, b)]
    return max(float((p - q).abs().max() / q.abs().max().clamp_min(1e-30)) for p, q in pairs)


def time_formulations(formulations: dict[str, Callable], rounds: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each formulation over ``rounds`` rounds of ``repeats`` calls; the
    formulations alternate within a round, their order reversed every other round."""
    names = list(formulations)
    for name in names:
        formulations[name]()  # warm up
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for _ in range(repeats):
                formulations[name]()
            seconds[name].append((time.perf_counter() - start) / repeats)
    return {name: statistics.median(values) for name, values in seconds.items()}


def time_products(module, batch_size: int, rounds: int, repeats: int, seed: int) -> dict:
    """Time every shared GMM layer's products of ``module``'s stack in each formulation, at the
    inputs that a batch of random 8-bit images gives (in the calling process, at its thread count).
    Sets each annealable layer's sigma to its starting width. Returns the per-layer rows and the
    sums in the layers' own and in the fastest formulations (seconds and FLOPs per step)."""
    import torch

    from dcgmm.core.layers.gmm import SEPARATE_FROM
    from dcgmm.core.layers.smoothing import is_identity_width
    from dcgmm.training.annealing import AnnealingSchedule

    generator = torch.Generator().manual_seed(seed)
    stack = module.stack
    x = torch.randint(0, 256, (batch_size, *stack.input_shape), generator=generator).float() / 255
    for layer in stack.gmm_layers:
        if layer.annealable:  # as at the start of training: the products cost the same at any width that smooths
            layer.set_sigma(AnnealingSchedule.default_sigma0(layer.K))
    layers = []
    for index, (inp, fold) in sorted(layer_inputs(stack, x).items()):
        layer = stack.layers[index]
        if layer.mode != "shared":
            layers.append({"layer": index, "skipped": "independent mode (one parameter set per position)"})
            continue
        kernel = layer.smoothing.clone()
        if fold is not None and layer.convolves(fold):
            formulations, flops = conv_formulations(layer, fold, inp, kernel)
            own = "convolution" if inp.shape[1] < SEPARATE_FROM else "two_convolutions"
        else:
            formulations, flops = row_formulations(layer, inp, kernel)
            own = "addmm"
        reference = formulations[own]()
        differences = {f: relative_difference(formulations[f](), reference) for f in formulations}
        seconds = time_formulations(formulations, rounds, repeats)
        row = {
            "layer": index, "K": layer.K, "D": layer.D, "P": layer.P, "own": own, "flops": flops,
            "seconds": seconds, "relative_difference": differences,
        }
        if layer.annealable and not is_identity_width(layer.sigma):  # the layer smooths: time its smoothing product
            scores = reference[0].reshape(-1, layer.K).contiguous()
            smoothing = smoothing_formulations(layer, scores)
            with torch.no_grad():
                row["smoothing_relative_difference"] = relative_difference(smoothing["separable"](), smoothing["full"]())
                row["smoothing_seconds"] = time_formulations(smoothing, rounds, repeats)
            row["smoothing_flops"] = 2 * scores.shape[0] * layer.K * layer.K
        layers.append(row)
    timed = [row for row in layers if "seconds" in row]
    return {
        "layers": layers,
        "products_seconds_own": sum(row["seconds"][row["own"]] + row.get("smoothing_seconds", {}).get("full", 0.0) for row in timed),
        "products_seconds_best": sum(min(row["seconds"].values()) + min(row.get("smoothing_seconds", {"-": 0.0}).values()) for row in timed),
        "products_flops": sum(row["flops"] + row.get("smoothing_flops", 0) for row in timed),
    }


def measure_products(name: str, batch_size: int, rounds: int, repeats: int, threads: int | None, seed: int) -> dict:
    """Time every GMM layer's products of topology ``name`` (runs in its own process)."""
    import torch

    from dcgmm.training.runtime import flush_denormals, keep_freed_memory

    quiet_libraries()
    keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    flush_denormals()
    module = build_module(name)
    gemm_before = gemm_gflops()
    timed = time_products(module, batch_size, rounds, repeats, seed)
    gemm_after = gemm_gflops()
    gemm = statistics.median([gemm_before, gemm_after])
    own_seconds, best_seconds = timed["products_seconds_own"], timed["products_seconds_best"]
    return {
        "model": name,
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "gemm_gflops": gemm,
        "gemm_gflops_before_after": [gemm_before, gemm_after],
        "layers": timed["layers"],
        "products_seconds_own": own_seconds,
        "products_seconds_best": best_seconds,
        "products_gflops_own": timed["products_flops"] / own_seconds / 1e9,
        "ratio_ceiling_own": batch_size / own_seconds / gemm,
        "ratio_ceiling_best": batch_size / best_seconds / gemm,
    }


# ----------------------------------------------------------------------------- command line
def add_products_arguments(parser: argparse.ArgumentParser, rounds: int = 7) -> None:
    """The options of a benchmark that alternates variants per topology (``products``, ``floor``)."""
    parser.add_argument("--models", nargs="+", default=["dcgmm2", "dcgmm3"])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=rounds, help="rounds of alternating variants (the median is reported)")
    parser.add_argument("--repeats", type=int, default=10, help="calls of each variant per round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)


def per_model(measure: Callable[..., dict], args: argparse.Namespace, **extra) -> list[dict]:
    """``measure`` of every ``--models`` topology, each in its own process, with the options of
    :func:`add_products_arguments` (and ``extra``)."""
    return [
        run_isolated(measure, name=name, batch_size=args.batch_size, rounds=args.rounds, repeats=args.repeats,
                     threads=args.threads, seed=args.seed, **extra)
        for name in args.models
    ]


def require_agreement(worst: float, what: str) -> None:
    """Stop when two formulations that must compute the same numbers differ beyond :data:`TOLERANCE`."""
    if worst > TOLERANCE:
        raise RuntimeError(f"{what} differ by {worst:.1e} (relative), above {TOLERANCE}")


def run_products(args: argparse.Namespace) -> dict:
    results = per_model(measure_products, args)
    for result in results:
        require_agreement(max(
            [d for row in result["layers"] for d in row.get("relative_difference", {}).values()]
            + [row.get("smoothing_relative_difference", 0.0) for row in result["layers"]]
        ), f"{result['model']}: two formulations")
    return {"benchmark": "products", "machine": machine_info(), "results": results}


def format_products(result: dict) -> str:
    m = result["machine"]
    lines = [f"Products of the GMM layers on {m['cpu_model']}, {m['usable_cores']} cores, torch {m['versions']['torch']}, {m.get('date', '')}"]
    for r in result["results"]:
        lines += ["", f"{r['model']} (batch {r['batch_size']}, {r['torch_threads']} thread(s), fp32 GEMM {r['gemm_gflops']:.0f} GFLOP/s in the same process)"]
        for row in r["layers"]:
            if "skipped" in row:
                lines.append(f"  layer {row['layer']}: not timed, {row['skipped']}")
                continue
            lines.append(f"  layer {row['layer']} (K={row['K']}, D={row['D']}, P={row['P']}), scores and parameter gradient, {row['flops'] / 1e6:.0f} MFLOP:")
            for form, seconds in sorted(row["seconds"].items(), key=lambda item: item[1]):
                mark = "  (the layer's)" if form == row["own"] else ""
                lines.append(f"    {form:<18}{1000 * seconds:>9.2f} ms {row['flops'] / seconds / 1e9:>7.1f} GFLOP/s{mark}")
            for form, seconds in sorted(row.get("smoothing_seconds", {}).items(), key=lambda item: item[1]):
                mark = "  (the layer's)" if form == "full" else ""
                lines.append(f"    smoothing {form:<8}{1000 * seconds:>9.2f} ms {row['smoothing_flops'] / seconds / 1e9:>7.1f} GFLOP/s (of the full product's FLOPs){mark}")
        lines.append(
            f"  products: {1000 * r['products_seconds_own']:.1f} ms per step as the layers run them "
            f"({r['products_gflops_own']:.0f} GFLOP/s), {1000 * r['products_seconds_best']:.1f} ms in the fastest formulation of each"
        )
        lines.append(
            f"  a step made of these products alone: {r['ratio_ceiling_own']:.0f} images/s per GEMM-GFLOP/s, "
            f"{r['ratio_ceiling_best']:.0f} with the fastest formulations"
        )
    return "\n".join(lines)

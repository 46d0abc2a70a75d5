"""The benchmark command line runs its measurements end to end (tiny settings; no timing asserted),
and the FLOP count behind the topology benchmark's ratio ceiling."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, needs_mnist


@needs_mnist
def test_epoch_benchmark_splits_train_py_epochs_into_steps_and_the_rest(tmp_path):
    out = tmp_path / "epoch.json"
    command = [sys.executable, "-m", "benchmarks.run", "epoch", "--epochs", "3", "--threads", "1", "--json", str(out), "--",
               "+trainer.limit_train_batches=7", "+trainer.limit_val_batches=2", "logger=none", "model=flat_gmm", "model.K=9"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "outside" in result.stdout and "GEMM" in result.stdout
    record = json.loads(out.read_text())
    run = record["result"]
    assert run["train_steps_per_epoch"] == 7 and len(run["epoch_seconds"]) == 3
    assert run["overrides"][-1] == "model.K=9" and run["torch_threads"] == 1
    shares = sorted(1 - s / w for s, w in zip(run["epoch_step_seconds"][1:], run["epoch_seconds"][1:]))
    assert 0 < run["overhead"] < 1 and min(shares) <= run["overhead"] <= max(shares)
    assert record["target"]["met"] == (run["overhead"] < record["target"]["bound"])


@pytest.mark.parametrize("name", ["flat_gmm", "dcgmm2", "dcgmm3", "dcgmm2_pool", "dcgmm4_pool"])
@pytest.mark.parametrize("sigma", [None, 1.0])
def test_the_ratio_ceiling_counts_the_products_of_a_training_step(name, sigma):
    """benchmarks.topology's FLOPs of a training step's products against torch's FLOP counter over
    one real step (forward, backward, SGD) of three images, with and without smoothing."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.topology import product_flops_per_image
    from dcgmm.app.config import build_model
    from dcgmm.app.module import plain_sgd_step

    module = build_model(name)
    for layer in module.stack.gmm_layers:
        layer.set_sigma(sigma)
    x, y = torch.rand(3, 1, 28, 28), torch.randint(0, 10, (3,))
    with FlopCounterMode(display=False) as counter:
        plain_sgd_step(module, module.configure_optimizers(), x, y)
    assert 3 * product_flops_per_image(module.stack) == counter.get_total_flops()


def test_the_operator_clock_sees_the_products_of_a_training_step():
    """benchmarks.topology.profile_steps times the operators a step dispatches, forward and backward."""
    from benchmarks.topology import PRODUCT_OPS, profile_steps
    from dcgmm.app.config import build_model

    module = build_model("dcgmm2")
    result = profile_steps(module, (torch.rand(20, 1, 28, 28), torch.randint(0, 10, (20,))), steps=2, top=50)
    seen = {row["op"] for row in result["ops"]}
    assert {"aten.convolution", "aten.convolution_backward", "aten.addmm", "aten.mm"} <= seen  # B's products, both passes
    assert 0 < result["products_seconds_per_step"] and 0 < result["products_share"]
    products = sum(row["ms_per_step"] for row in result["ops"] if row["op"] in PRODUCT_OPS) / 1000
    assert result["products_seconds_per_step"] == pytest.approx(products)


def _reference_gradient(layer, inp, fold):
    """The layer's own scores through its real path, the gradient of its real loss with respect to
    them, and from that gradient the weight-term gradient in float64 (patches cut by hand)."""
    import torch.nn.functional as F

    convolves = fold is not None and layer.convolves(fold)
    scores = layer.log_scores_of_patches(inp, fold) if convolves else layer.log_scores(inp)  # (N, P, K)
    scores.retain_grad()
    layer.loss(scores).backward()
    grad = scores.grad.double()  # (N, P, K)
    x = inp.double()
    if convolves:
        cols = F.unfold(torch.cat((x * x, x), dim=1), fold.kernel_size, stride=fold.stride)  # (N, 2C*kh*kw, P)
        weight_grad = torch.einsum("npk,nfp->kf", grad, cols).view(layer.K, 2 * x.shape[1], *fold.kernel_size)
    else:
        rows = x.reshape(x.shape[0], layer.D, layer.P).transpose(1, 2)  # (N, P, D)
        weight_grad = torch.stack([torch.einsum("npk,npd->kd", grad, r) for r in (rows * rows, rows)])
    return scores.detach(), scores.grad, weight_grad


@pytest.mark.parametrize("name", ["dcgmm2", "dcgmm3", "dcgmm2_pool"])
@pytest.mark.parametrize("sigma", [None, 1.0])
def test_every_product_formulation_gives_the_layers_scores_and_gradients(name, sigma):
    """benchmarks.products times only formulations that compute what the layers compute: their scores
    equal the layer's own, their weight gradient equals one from the layer's real loss (float64,
    patches cut by hand), the score gradient they are given is that loss's, and the separable
    smoothing product equals the full one."""
    from benchmarks.products import conv_formulations, layer_inputs, row_formulations, score_gradient, smoothing_formulations
    from dcgmm.app.config import build_model

    torch.manual_seed(0)
    stack = build_model(name).stack
    for layer in stack.gmm_layers:
        layer.set_sigma(sigma)
    inputs = layer_inputs(stack, torch.rand(4, 1, 28, 28))
    assert sorted(inputs) == [layer.index for layer in stack.gmm_layers]
    kinds = set()
    for index, (inp, fold) in inputs.items():
        layer = stack.layers[index]
        scores, score_grad, weight_grad = _reference_gradient(layer, inp, fold)
        grad, _, _ = score_gradient(scores, layer.smoothing)
        torch.testing.assert_close(grad, score_grad, rtol=1e-5, atol=1e-9)
        if fold is not None and layer.convolves(fold):
            formulations, _ = conv_formulations(layer, fold, inp, layer.smoothing)
        else:
            formulations, _ = row_formulations(layer, inp, layer.smoothing)
        kinds |= set(formulations)
        for form, run in formulations.items():
            out_scores, out_grad = run()
            scale = weight_grad.abs().max()
            assert (out_grad.double() - weight_grad).abs().max() <= 1e-5 * scale, (name, index, form)
            torch.testing.assert_close(out_scores, scores, rtol=1e-5, atol=1e-5 * float(scores.abs().max()), msg=f"{name} layer {index} {form}")
        if sigma is not None and layer.K == round(layer.K**0.5) ** 2:
            smoothing = smoothing_formulations(layer, scores.reshape(-1, layer.K))
            full = smoothing["full"]()
            assert (smoothing["separable"]() - full).abs().max() <= 1e-5 * full.abs().max()
    assert {"convolution", "two_convolutions", "patches", "sparse_gradient", "addmm", "transposed"} <= kinds
    assert ("space_to_depth" in kinds) == (name != "dcgmm2_pool")  # stride 2 foldings only in B and E


def test_row_formulations_of_a_layer_with_many_positions():
    """The row formulations where a GMM layer reads a map of several positions (no folding below)."""
    from benchmarks.products import row_formulations
    from dcgmm.core.layers import GMMLayer

    torch.manual_seed(1)
    layer = GMMLayer((4, 3, 5), K=9)
    layer.set_sigma(0.8)
    inp = torch.rand(6, 4, 3, 5)
    scores, _, weight_grad = _reference_gradient(layer, inp, None)
    formulations, flops = row_formulations(layer, inp, layer.smoothing)
    assert flops == 2 * 2 * 6 * (2 * 15 * 9 * 4)
    for form, run in formulations.items():
        out_scores, out_grad = run()
        torch.testing.assert_close(out_scores, scores, rtol=1e-5, atol=1e-5)
        assert (out_grad.double() - weight_grad).abs().max() <= 1e-5 * weight_grad.abs().max(), form


def test_products_benchmark_runs_end_to_end(tmp_path):
    out = tmp_path / "products.json"
    command = [sys.executable, "-m", "benchmarks.run", "products", "--models", "dcgmm2", "--rounds", "1", "--repeats", "1", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fastest formulation" in result.stdout and "GEMM" in result.stdout
    run = json.loads(out.read_text())["results"][0]
    timed = [row for row in run["layers"] if "seconds" in row]
    assert [row["layer"] for row in timed] == [1, 3]
    assert all(row["own"] in row["seconds"] for row in timed) and all("smoothing_seconds" in row for row in timed)
    assert 0 < run["products_seconds_best"] <= run["products_seconds_own"]
    assert run["ratio_ceiling_best"] == pytest.approx(100 / run["products_seconds_best"] / run["gemm_gflops"])


@needs_mnist
def test_topology_benchmark_sets_a_step_against_its_products_timed_alone(tmp_path):
    out = tmp_path / "topology.json"
    command = [sys.executable, "-m", "benchmarks.run", "topology", "--models", "dcgmm2", "--steps", "3", "--epochs", "1",
               "--threads", "1", "--product-rounds", "1", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step / products" in result.stdout
    record = json.loads(out.read_text())
    run = record["results"][0]
    own = sum(row["seconds"][row["own"]] + row["smoothing_seconds"]["full"] for row in run["products_alone_layers"])
    assert run["products_alone_seconds"] == pytest.approx(own)
    assert run["step_seconds"] == pytest.approx(100 / run["train_images_per_s_median"])
    assert run["step_over_products"] == pytest.approx(run["step_seconds"] / own)
    target = record["targets"]["dcgmm2/step_over_products"]
    assert target["bound"] == 1.3 and target["met"] == (run["step_over_products"] <= 1.3)


def test_the_operator_count_counts_what_a_call_dispatches():
    from benchmarks.floor import count_ops

    x = torch.ones(3)
    assert count_ops(lambda: x.add(1).mul_(2)) == 2
    assert count_ops(lambda: None) == 0


@pytest.mark.parametrize("name, index", [("dcgmm2", 1), ("dcgmm3", 1), ("dcgmm3", 3)])
def test_the_k_major_scores_are_the_layers_scores(name, index):
    """benchmarks.floor's K-major convolution gives the scores of the layer's folded patches (the
    plain row-by-row products, an independent path), for a stacked (images) and a two-convolution
    (wide map) layer."""
    from benchmarks.floor import k_major_scores
    from benchmarks.products import layer_inputs
    from dcgmm.app.config import build_model

    torch.manual_seed(0)
    stack = build_model(name).stack
    with torch.no_grad():
        for layer in stack.gmm_layers:  # away from the initial state, where every s is the same
            layer.inv_std.uniform_(1.0, 4.0)
            layer.mixture_logits.normal_()
    x = torch.randint(0, 256, (3, 1, 28, 28)).float() / 255
    inp, fold = layer_inputs(stack, x)[index]
    layer = stack.layers[index]
    with torch.no_grad():
        k_major = k_major_scores(layer, fold, inp.contiguous())  # (N, K, P), from the input in the default memory format
        rows = layer.log_scores(fold(inp))  # (N, P, K), patches cut, then addmm
    assert k_major.shape == (3, layer.K, layer.P) and k_major.is_contiguous()
    torch.testing.assert_close(k_major.transpose(1, 2), rows, rtol=1e-5, atol=1e-3)


def test_the_score_pass_variants_are_the_training_steps_gradients():
    """benchmarks.floor times a convolving layer's score pass as the layer runs it in a training
    step (``shipped``) and K-major: both give the gradients that the layer's loss in one bottom-up
    pass of the stack gives, at a width that smooths, and the same gradient of the scores."""
    from benchmarks.floor import score_pass_variants
    from benchmarks.products import TOLERANCE, layer_inputs
    from dcgmm.app.config import build_model

    torch.manual_seed(0)
    stack = build_model("dcgmm3").stack
    with torch.no_grad():
        for layer in stack.gmm_layers:
            layer.inv_std.uniform_(1.0, 4.0)
            layer.set_sigma(1.0)
    x = torch.randint(0, 256, (4, 1, 28, 28)).float() / 255
    _, raw = stack.bottom_up(x)
    losses = stack.losses(raw, None)
    for index, (inp, fold) in layer_inputs(stack, x).items():
        layer = stack.layers[index]
        if fold is None or not layer.convolves(fold):
            continue
        layer.zero_grad(set_to_none=True)
        losses[index].backward(retain_graph=True)
        reference = (layer.means.grad.clone(), layer.inv_std.grad.clone())
        parts = score_pass_variants(layer, fold, inp)
        for variant in ("shipped", "k_major"):
            for got, want in zip(parts["pass"][variant](), reference):
                torch.testing.assert_close(got, want, rtol=TOLERANCE, atol=TOLERANCE * want.abs().max().item())
        shipped, k_major = parts["reductions"]["shipped"](), parts["reductions"]["k_major"]()
        torch.testing.assert_close(k_major.transpose(1, 2), shipped, rtol=TOLERANCE, atol=0.0)
        assert shipped.abs().sum() > 0


def floor_run(tmp_path, *options) -> dict:
    out = tmp_path / "floor.json"
    command = [sys.executable, "-m", "benchmarks.run", "floor", "--models", "dcgmm2", "--batch-size", "4", "--rounds", "1",
               "--repeats", "1", *options, "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fixed cost" in result.stdout and "K-major" in result.stdout
    return json.loads(out.read_text())["results"][0]


def test_floor_benchmark_runs_end_to_end(tmp_path):
    from benchmarks.products import TOLERANCE

    run = floor_run(tmp_path, "--no-compile")
    assert run["model"] == "dcgmm2" and run["batch_size"] == 4 and "compiled_step_seconds" not in run
    assert run["ops_per_step"] > 100 and abs(run["ops_per_step_batch_1"] - run["ops_per_step"]) <= 2  # the same step
    (layer,) = run["score_pass"]  # B convolves once: layer 1 over the images
    assert layer["layer"] == 1 and set(layer["seconds"]) == {"pass", "convolution", "reductions"}
    assert all(set(times) == {"shipped", "k_major"} for times in layer["seconds"].values())
    assert max(layer["relative_difference"], layer["score_gradient_difference"]) <= TOLERANCE


@pytest.mark.slow
def test_floor_benchmark_compares_a_compiled_step(tmp_path):
    """The compiled variant (an inductor build, about 20 s): its one-step update against eager's,
    per parameter of B."""
    run = floor_run(tmp_path)
    names = set(run["compiled_update_difference"])
    assert {"layers.1.means", "layers.3.means", "layers.4.weight"} <= names
    assert run["compiled_worst_parameter"] in names and run["compiled_step_seconds"] > 0

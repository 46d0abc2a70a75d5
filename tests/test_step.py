"""dcgmm.training.step: the one vector of layer losses behind every way of running an SGD step."""

import torch

from dcgmm.app.config import build_model
from dcgmm.training.graphstep import GraphedStep
from dcgmm.training.step import loss_vector, sgd_step


def test_loss_vector_holds_each_layer_loss_in_stack_order_and_zero_without_labels():
    torch.manual_seed(0)
    module = build_model("dcgmm2", ["model.layers.1.K=4", "model.layers.3.K=4", "model.anneal=false"])
    stack = module.stack
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    _, raw = stack.bottom_up(x)
    vector, present = loss_vector(stack, raw, y)
    by_hand = [stack.layers[layer.index].loss(raw[layer.index], y) for layer in stack.learning_layers]
    assert present == (True, True, True) and torch.equal(vector, torch.stack(by_hand))

    vector, present = loss_vector(stack, raw, None)  # no labels: the classifier has no loss
    assert present == (True, True, False) and vector[2] == 0 and torch.equal(vector[:2], torch.stack(by_hand[:2]))
    vector.sum().backward()
    assert all(p.grad is None for p in stack.classifier.parameters())  # a constant zero: no gradient at all
    stack.zero_grad(set_to_none=True)
    _, raw = stack.bottom_up(x)
    kept, _ = loss_vector(stack, raw, None, keep_graph=True)  # data parallel: in the graph, gradient zero
    kept.sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in stack.classifier.parameters())


def test_the_plain_step_and_the_graph_engine_make_the_same_update():
    """sgd_step (torch's SGD) and GraphedStep without capture (its own update) from the same state."""
    results = []
    for engine in ("plain", "graph"):
        torch.manual_seed(0)
        module = build_model("dcgmm2", ["model.layers.1.K=4", "model.layers.3.K=4", "model.anneal=false"])
        optimizer = module.configure_optimizers()
        x, y = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.arange(6)
        if engine == "plain":
            sgd_step(module.stack, optimizer, x, y)
        else:
            GraphedStep(module.stack, optimizer, capture=False)(x, y, torch.ones(3))
        results.append({name: p.detach().clone() for name, p in module.named_parameters()})
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, rtol=1e-6, atol=1e-7, msg=name)

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


def test_the_learner_alone_trains_as_train_py_does_through_lightning():
    """The Lightning-free step (Learner + EagerEngine, torch's SGD) over the batches Lightning's loop
    feeds: the same parameters, sigmas and learning rates as a fit through the LightningModule,
    bit for bit, with annealing deciding every 10 steps and layer 3 waiting a third of the run."""
    from dcgmm.data.datamodule import EpochBatches, EpochSeededSampler, TensorBatchDataset
    from dcgmm.training.step import EagerEngine, Learner
    from tests.reference import record

    steps = 30
    through_lightning, _ = record.train_b(1, steps=steps)

    torch.manual_seed(0)
    settings = {"annealing.window": 10, "annealing.delta": 100, "layers.3.wait": 0.34}
    module = build_model("dcgmm2", [f"model.{k}={v}" for k, v in settings.items()])
    g = torch.Generator().manual_seed(1)
    x = torch.rand(steps * record.BATCH, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (steps * record.BATCH,), generator=g)
    dataset = TensorBatchDataset(x, y)
    order = EpochBatches(EpochSeededSampler(len(x), 0), record.BATCH)
    optimizer = module.configure_optimizers()
    learner = Learner(module.stack, module.policies, module.annealing, total_steps=steps)
    assert learner.first_steps == [0, 11, 0]  # layers 1, 3, 4: layer 3 waits ceil(0.34 * 31) = 11 of the 30 steps
    done = learner.run(EagerEngine(learner, optimizer), (dataset[index] for index in order), step=0)
    assert done == steps and learner.steps_in_epoch == steps

    for (name, want), got in zip(through_lightning.named_parameters(), module.parameters()):
        assert torch.equal(got, want), name
    assert module.annealing.values() == through_lightning.annealing.values()
    torch.manual_seed(0)
    untrained = build_model("dcgmm2", [f"model.{k}={v}" for k, v in settings.items()])
    assert module.annealing.values() != untrained.annealing.values()  # the windows did shrink sigma and lr

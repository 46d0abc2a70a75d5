"""Smoothing kernel and annealing schedule (docs/design.md section 2)."""

import json
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from dcgmm.app.module import DCGMMModule
from dcgmm.core.layers.smoothing import smoothing_kernel, toroidal_sq_distances
from dcgmm.errors import ConfigError
from dcgmm.training.annealing import Annealing, AnnealingSchedule


@pytest.mark.parametrize("K, sigma", [(9, 0.7), (25, 2.0), (100, 3.5)])
def test_kernel_rows_sum_to_one_and_symmetric(K, sigma):
    g = smoothing_kernel(K, sigma)
    torch.testing.assert_close(g.sum(1), torch.ones(K))
    torch.testing.assert_close(g, g.t())  # every row is a shifted copy on the torus


def test_wrap_around_distances():
    d2 = toroidal_sq_distances(5)  # 5 x 5 grid, component k at (k // 5, k % 5)
    assert d2[0, 4] == 1  # (0,0)-(0,4): neighbours across the edge
    assert d2[0, 20] == 1  # (0,0)-(4,0)
    assert d2[0, 24] == 2  # corner to corner: one step each way
    assert d2[0, 12] == 8  # (0,0)-(2,2): no shorter way round
    assert d2[6, 18] == 8  # (1,1)-(3,3)
    g = smoothing_kernel(25, 1.0)
    assert g[0, 4] == pytest.approx(g[0, 1].item())  # wrap neighbour weighs like a direct one
    expected = math.exp(-0.5) / sum(math.exp(-(d.item()) / 2) for d in d2[0])
    assert g[0, 1].item() == pytest.approx(expected, rel=1e-5)


def test_identity_at_sigma_floor():
    torch.testing.assert_close(smoothing_kernel(49, 0.01), torch.eye(49))


def run_schedule(schedule, window_averages):
    """Feed each window's average as `window` equal per-step losses; return (step, sigma, lr) after each step."""
    trace = []
    for avg in window_averages:
        for _ in range(schedule.window):
            schedule.step(torch.tensor(avg))
            trace.append((schedule.steps, schedule.sigma, schedule.lr))
    return trace


def test_schedule_shrinks_exactly_at_stalled_window_ends():
    s = AnnealingSchedule(sigma0=2.0, lr0=0.011, lr_min=0.001, gamma=0.9, window=10, delta=0.05)
    # windows 1-5 improve by 10 each, then the loss stalls
    trace = run_schedule(s, [90, 80, 70, 60, 50, 50, 50, 50])
    sigma_at = {step: sigma for step, sigma, _ in trace}
    lr_at = {step: lr for step, _, lr in trace}
    # decisions after the 9th step of each window: windows 3, 4, 5: r = 1, 0.5, 0.33 -> no change;
    # windows 6, 7, 8: r = 0 -> shrink
    assert sigma_at[58] == 2.0 and sigma_at[49] == 2.0
    assert sigma_at[59] == pytest.approx(1.8) and sigma_at[68] == pytest.approx(1.8)
    assert sigma_at[69] == pytest.approx(1.62) and sigma_at[79] == pytest.approx(1.458)
    assert lr_at[58] == 0.011 and lr_at[59] == pytest.approx(0.0099) and lr_at[79] == pytest.approx(0.011 * 0.9**3)
    changes = [step for (step, sg, _), (_, prev, _) in zip(trace[1:], trace[:-1]) if sg != prev]
    assert changes == [59, 69, 79]


def test_schedule_follows_a_hand_worked_sequence():
    """W = 3: a decision after steps 2, 5, 8, 11, 14 on the mean of the window's first two
    losses; the third loss of each window (steps 3, 6, 9, ...) counts for nothing.

    step   1  2 | 3    4  5 | 6    7    8 | 9   10   11 | 12  13   14 | 15
    loss   1  2 | 99   4  5 | 99   6.1  6.1 | 99 6.2  6.2 | 99 6.2  6.2 | 99
    window 1: l0 = 1.5; window 2: last = 4.5; window 3: r = (6.1-4.5)/(4.5-1.5) = 0.533 -> keep;
    window 4: r = (6.2-6.1)/(6.1-1.5) = 0.0217 -> shrink; window 5: r = 0 -> shrink.
    """
    s = AnnealingSchedule(sigma0=1.0, lr0=0.011, lr_min=0.01, gamma=0.9, window=3, delta=0.05)
    losses = [1, 2, 99, 4, 5, 99, 6.1, 6.1, 99, 6.2, 6.2, 99, 6.2, 6.2, 99]
    changed = [s.step(torch.tensor(v)) for v in losses]
    assert [i + 1 for i, c in enumerate(changed) if c] == [11, 14]
    assert s.l0 == pytest.approx(1.5) and s.last == pytest.approx(6.2)
    assert s.sigma == pytest.approx(0.81) and s.lr == pytest.approx(0.01)  # 0.011 * 0.9 < floor 0.01
    assert [s.decides_at(t) for t in range(1, 7)] == [False, True, False, False, True, False]


@pytest.mark.parametrize("wait, total, first", [(0.0, 20, 0), (0.5, 20, 11), (0.1, 9, 1), (0.1, 5500, 551), (1.0, 20, 21)])
def test_first_learning_step_counts_the_fraction_of_total_plus_one(wait, total, first):
    # step t counts as t / (T + 1) of training: the layer learns once that reaches wait
    from dcgmm.training.annealing import first_learning_step

    assert first_learning_step(wait, total) == first


def test_waiting_layer_schedule_starts_counting_when_its_wait_ends(tmp_path):
    """20 steps, top layer waits 0.5: it learns from step 11 (11/21 >= 0.5), so its schedule sees
    9 steps (decisions after its steps 2, 5, 8 with W = 3) and its parameters stay fixed before."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from dcgmm.app.module import DCGMMModule

    torch.manual_seed(0)
    layers = [
        {"kind": "folding", "kernel_size": 4, "stride": 2},
        {"kind": "gmm", "K": 4, "window": 3},
        {"kind": "folding", "kernel_size": 3, "stride": 1},
        {"kind": "gmm", "K": 4, "window": 3, "wait": 0.5},
    ]
    module = DCGMMModule(layers, input_shape=(1, 8, 8), lr=0.05, lr_min=0.01)
    top = module.stack.layers[3]
    snapshots = []

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            snapshots.append(top.means.detach().clone())

    data = DataLoader(TensorDataset(torch.rand(200, 1, 8, 8), torch.zeros(200, dtype=torch.long)), batch_size=10)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Watch()], default_root_dir=tmp_path)
    trainer.fit(module, data)
    snapshots.append(top.means.detach().clone())
    assert module.schedules[1].steps == 20 and module.schedules[3].steps == 9
    assert module.schedules[3].windows == 3 and module.schedules[1].windows == 7
    unchanged = [torch.equal(a, b) for a, b in zip(snapshots[:-1], snapshots[1:])]  # step t: before -> after
    assert unchanged == [True] * 11 + [False] * 9


def test_schedule_respects_floors():
    s = AnnealingSchedule(sigma0=0.0125, lr0=0.011, lr_min=0.01, sigma_min=0.01, gamma=0.9, window=5)
    run_schedule(s, [10, 5] + [5] * 10)
    assert s.sigma == 0.01 and s.lr == 0.01
    assert s.at_floor


def test_ratio_band():
    s = AnnealingSchedule(sigma0=1.0, lr0=0.1, lr_min=0.01, window=1, delta=0.05)
    for avg in (10.0, 0.0):  # l0 = 10, last = 0: total improvement -10
        s.step(avg)
    s.step(0.9)  # got worse by 0.9: r = -0.09, inside (-0.1, 0.05) -> shrink
    assert s.sigma == pytest.approx(0.9)
    s.step(2.5)  # worse by 1.6 relative to total -9.1... r = -0.176 -> outside the band, no shrink
    assert s.sigma == pytest.approx(0.9)
    s.step(-10.0)  # large improvement: r > delta -> no shrink
    assert s.sigma == pytest.approx(0.9)


def test_disabled_schedule_keeps_floor_sigma_and_lr():
    s = AnnealingSchedule(sigma0=3.0, lr0=0.05, lr_min=0.01, window=2, enabled=False)
    run_schedule(s, [1.0] * 10)
    assert s.sigma == s.sigma_min and s.lr == 0.05


def test_state_roundtrip_continues_identically():
    a = AnnealingSchedule(sigma0=2.0, lr0=0.011, lr_min=0.001, window=4)
    seq = [9.0, 8.0, 7.5, 7.4, 7.39, 7.39, 7.2, 7.2]
    run_schedule(a, seq[:3])
    a.step(7.4)  # leave a window half open
    b = AnnealingSchedule(sigma0=2.0, lr0=0.011, lr_min=0.001, window=4)
    b.load_state_dict(a.state_dict())
    for sched in (a, b):
        for _ in range(3):
            sched.step(7.4)
        run_schedule(sched, seq[4:])
    assert a.state_dict() == b.state_dict()


def test_bad_schedule_values():
    with pytest.raises(ConfigError, match=r"lr0=0.0 must be > 0; try lr0=0.01"):
        AnnealingSchedule(sigma0=1.0, lr0=0.0, lr_min=0.01)
    with pytest.raises(ConfigError, match="perfect square"):
        smoothing_kernel(10, 1.0)


# ----------------------------------------------------------------------------- the component
DATA = Path(__file__).parent / "data"


def test_checkpoint_written_before_the_annealing_component_loads_unchanged():
    """tests/data/checkpoint_v1.ckpt was written by the code before the annealing component
    existed (training settings and annealing inside GMMLayer, commit b4893ef), with the reference
    values in checkpoint_v1.json: the schedules, each layer's sigma, the optimiser's group rates
    (lambdas and the independent mode's factor P included), objectives and logits of a fixed
    probe. Loaded now, everything agrees."""
    reference = json.loads((DATA / "checkpoint_v1.json").read_text())
    module = DCGMMModule.load_from_checkpoint(DATA / "checkpoint_v1.ckpt", map_location="cpu", weights_only=False)
    module.eval()
    assert {str(k): v for k, v in module.annealing.state_dict().items()} == reference["schedules"]
    for index, sigma in reference["layer_sigma"].items():
        layer = module.stack.layers[int(index)]
        assert layer.sigma == sigma
        torch.testing.assert_close(layer.smoothing, smoothing_kernel(layer.K, sigma))
    rates = [group["lr"] for group in module.configure_optimizers().param_groups]
    assert rates == pytest.approx(reference["optimizer_lr"], rel=1e-12)
    probe = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    _, raw = module.stack.bottom_up(probe)
    for index, values in reference["objective"].items():
        torch.testing.assert_close(module.stack.layers[int(index)].objective(raw[int(index)]), torch.tensor(values))
    torch.testing.assert_close(raw[4], torch.tensor(reference["logits"]))
    assert module.policies[3].wait == 0.2 and module.policies[1].factor("sigma") == 0.3


def test_annealing_component_from_hydra_overrides_per_layer_settings(train_cfg):
    """model.annealing.* are the model-wide settings; a layer's spec overrides them for that layer."""
    cfg = train_cfg("model=dcgmm2", "model.annealing.window=7", "model.annealing.gamma=0.5", "+model.layers.3.window=3")
    module = instantiate(cfg.model)
    assert isinstance(module.annealing, Annealing)
    assert (module.schedules[1].window, module.schedules[3].window) == (7, 3)
    assert module.schedules[1].gamma == module.schedules[3].gamma == 0.5
    assert module.stack.layers[1].sigma == pytest.approx(0.25 * math.sqrt(2 * 49))


def test_annealing_step_sets_layer_sigma_and_group_rates():
    """A decision that shrinks sigma reaches the layer's kernel and every optimiser group of that
    layer (rate times the group's factor), and only that layer's groups."""
    module = DCGMMModule(
        layers=[{"kind": "gmm", "K": 4, "window": 1}, {"kind": "gmm", "K": 9, "input_layer": -1}],
        input_shape=(3, 1, 1), lr=0.1, lr_min=0.001, lambda_sigma=0.5,
    )
    optimizer = module.configure_optimizers()
    first = module.stack.layers[0]
    sigma0 = first.sigma
    changed = [module.annealing.step(0, torch.tensor(loss), optimizer) for loss in (3.0, 2.0, 2.0)]
    assert changed == [False, False, True]  # the third window's r = 0 lies in the band
    assert first.sigma == pytest.approx(0.9 * sigma0)
    torch.testing.assert_close(first.smoothing, smoothing_kernel(4, 0.9 * sigma0))
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert rates["L0_gmm/mu"] == pytest.approx(0.09) and rates["L0_gmm/sigma"] == pytest.approx(0.045)
    assert rates["L1_gmm/mu"] == pytest.approx(0.1)  # the other layer is untouched


def test_annealing_settings_have_one_home():
    """AnnealingSettings holds the defaults and checks; the schedule, the component and the shipped
    config (conf/model/_common.yaml's model.annealing) take them from there."""
    import dataclasses
    import inspect

    from omegaconf import OmegaConf

    from dcgmm.training.policy import LAMBDA_DEFAULTS, AnnealingSettings, DensityKeys
    from tests.conftest import CONFIG_DIR

    defaults = {f.name: f.default for f in dataclasses.fields(AnnealingSettings)}
    model = OmegaConf.load(CONFIG_DIR / "model" / "_common.yaml")
    assert {key: model.annealing[key] for key in defaults} == defaults
    lambdas = {f.name: f.default for f in dataclasses.fields(DensityKeys) if f.name.startswith("lambda_")}
    assert lambdas == LAMBDA_DEFAULTS == {key: model[key] for key in lambdas}  # the training keys' defaults, and the shipped config
    for target in (Annealing, AnnealingSchedule):
        parameters = inspect.signature(target).parameters
        optional = [key for key in defaults if key in parameters and parameters[key].default is not inspect.Parameter.empty]  # a schedule needs its sigma0
        assert optional and {key: parameters[key].default for key in optional} == {key: defaults[key] for key in optional}
    for bad, message in [(dict(gamma=1.0), "gamma=1.0 must lie in (0, 1)"), (dict(window=0), "window=0 must be >= 1"),
                         (dict(sigma_min=0.0), "sigma_min=0.0 must be > 0"), (dict(sigma0=-1.0), "sigma0=-1.0 must be > 0")]:
        with pytest.raises(ConfigError) as info:
            AnnealingSettings(**bad)
        assert message in str(info.value)

"""Smoothing kernel and annealing schedule (spec section 2)."""

import math

import pytest
import torch

from dcgmm.annealing import AnnealingSchedule, smoothing_kernel, toroidal_sq_distances
from dcgmm.errors import ConfigError


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
    # windows 3, 4, 5: r = 1, 0.5, 0.33 -> no change; windows 6, 7, 8: r = 0 -> shrink
    assert sigma_at[59] == 2.0 and sigma_at[50] == 2.0
    assert sigma_at[60] == pytest.approx(1.8) and sigma_at[69] == pytest.approx(1.8)
    assert sigma_at[70] == pytest.approx(1.62) and sigma_at[80] == pytest.approx(1.458)
    assert lr_at[59] == 0.011 and lr_at[60] == pytest.approx(0.0099) and lr_at[80] == pytest.approx(0.011 * 0.9**3)
    changes = [step for (step, sg, _), (_, prev, _) in zip(trace[1:], trace[:-1]) if sg != prev]
    assert changes == [60, 70, 80]


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
    with pytest.raises(ConfigError, match="learning rate must be > 0"):
        AnnealingSchedule(sigma0=1.0, lr0=0.0, lr_min=0.01)
    with pytest.raises(ConfigError, match="perfect square"):
        smoothing_kernel(10, 1.0)

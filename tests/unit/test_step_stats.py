"""Step statistics summed on the device: the same means the host-side lists gave, and non-finite runs counted."""

from __future__ import annotations

import math
import random

import torch

from capsgan_dist.step_stats import D_KEYS, G_KEYS, StepStats

NAN = float("nan")


def _d(gnorm: float, seed: int) -> torch.Tensor:
    rng = random.Random(seed)
    return torch.tensor([rng.uniform(0, 2), rng.random(), rng.random(), rng.random(), gnorm])


def test_window_means_equal_python_float_means():
    """float32 statistics summed in float64 give exactly what sum(list of .item()) / len gave."""
    stats = StepStats(torch.device("cpu"), limit=3)
    d_rows, g_rows = [], []
    for step in range(9):  # alternate: D on even steps, G on odd
        if step % 2 == 0:
            d = _d(1.0 + step, step)
            d_rows.append(d.tolist())
            stats.record(step, d, None, 16)
        else:
            g = torch.tensor([0.5 + step / 7, 0.1 * step])
            g_rows.append(g.tolist())
            stats.record(step, None, g, 16)
    window = stats.read()
    for keys, rows in ((D_KEYS, d_rows), (G_KEYS, g_rows)):
        for i, k in enumerate(keys):
            assert window.means[k] == sum(r[i] for r in rows) / len(rows), k
    assert window.images == 9 * 16 and window.skipped == 0 and window.nonfinite_hit is None


def test_a_window_without_g_steps_has_no_g_keys_and_new_window_starts_empty():
    stats = StepStats(torch.device("cpu"), limit=3)
    stats.record(0, _d(1.0, 0), None, 16)
    assert set(stats.read().means) == set(D_KEYS)
    stats.new_window()
    stats.record(1, None, torch.tensor([2.0, 3.0]), 32)
    window = stats.read()
    assert window.means == {"loss_g": 2.0, "gnorm_g": 3.0} and window.images == 32


def test_nonfinite_steps_are_counted_and_a_run_of_limit_names_its_last_step():
    stats = StepStats(torch.device("cpu"), limit=3)
    bad = {2, 3, 5, 6, 7, 8}  # a run of 2 (steps 3-4, 1-based), then one of 4 reaching 3 at 1-based step 8
    for step in range(10):
        gnorm = NAN if step in bad else 1.0
        if step % 2 == 0:
            stats.record(step, _d(gnorm, step), None, 16)
        else:
            stats.record(step, None, torch.tensor([1.0, gnorm]), 16)
        window = stats.read()
        assert window.skipped == sum(1 for s in bad if s <= step)
        assert window.nonfinite_hit == (8 if step >= 7 else None), step
        if step == 4:
            stats.new_window()  # the counters carry over windows; the sums do not
    assert math.isnan(stats.read().means["gnorm_d"])


def test_both_schedule_step_is_bad_if_either_norm_is():
    stats = StepStats(torch.device("cpu"), limit=1)
    stats.record(0, _d(1.0, 0), torch.tensor([1.0, math.inf]), 64)
    assert stats.read().skipped == 1 and stats.read().nonfinite_hit == 1

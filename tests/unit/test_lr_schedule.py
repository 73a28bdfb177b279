"""train.py's learning-rate schedule on short runs (tuning trials with few epochs on small data)."""

from __future__ import annotations

import pytest
import torch
import train


@pytest.mark.parametrize("epochs, steps_per_epoch", [(1, 1), (2, 2), (1, 4), (4, 1), (3, 3), (5, 12)])
def test_one_cycle_schedule_runs_every_step_of_a_short_run(epochs, steps_per_epoch):
    """2 epochs of 2 batches (4 steps) used to raise ZeroDivisionError in OneCycleLR on the first step."""
    args = train.parse_args(["--train-dir", "t", "--validation-dir", "v", "--epochs", str(epochs), "--lr", "0.1"])
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler = train.build_optimizer(args, model, steps_per_epoch)
    rates = []
    for _ in range(epochs * steps_per_epoch):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert all(rate >= 0 for rate in rates)
    assert max(rates) <= 0.1 + 1e-9

"""LR schedules against their formulas."""

import math

import pytest
import torch

from elmtune.finetune.schedule import Schedule, warmup_steps_from


def test_cosine_with_warmup_and_minimum_matches_formula():
    s = Schedule(peak_lr=3e-4, total_steps=101, warmup_steps=10, kind="cosine", min_lr=3e-5, warmup_init_lr=1e-6)
    assert s.lr_at(0) == pytest.approx(1e-6 + (3e-4 - 1e-6) * 1 / 10)
    assert s.lr_at(4) == pytest.approx(1e-6 + (3e-4 - 1e-6) * 5 / 10)
    assert s.lr_at(9) == s.lr_at(10) == pytest.approx(3e-4)
    mid = 10 + 45  # halfway through the 91 decay steps (progress 45/90)
    assert s.lr_at(mid) == pytest.approx(3e-5 + (3e-4 - 3e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s.lr_at(100) == pytest.approx(3e-5)


def test_linear_and_constant():
    linear = Schedule(peak_lr=1.0, total_steps=11, kind="linear", min_lr=0.0)
    assert [round(linear.lr_at(i), 6) for i in (0, 5, 10)] == [1.0, 0.5, 0.0]
    constant = Schedule(peak_lr=2.0, total_steps=5, warmup_steps=2, kind="constant")
    assert [constant.lr_at(i) for i in range(5)] == [1.0, 2.0, 2.0, 2.0, 2.0]


def test_scheduler_drives_an_optimizer():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    schedule = Schedule(peak_lr=1.0, total_steps=4, warmup_steps=2, kind="linear", min_lr=0.5)
    scheduler = schedule.scheduler(optimizer)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([schedule.lr_at(i) for i in range(4)])


def test_warmup_as_steps_or_ratio_and_validation():
    assert warmup_steps_from(0.1, 250) == 25 and warmup_steps_from(1000, 200) == 200
    with pytest.raises(ValueError):
        warmup_steps_from(-3, 10)
    with pytest.raises(ValueError, match="min_lr"):
        Schedule(peak_lr=1e-4, total_steps=10, min_lr=1e-3)

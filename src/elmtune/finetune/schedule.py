"""Learning-rate schedules: linear warm-up, then cosine / linear decay to a minimum LR, or constant."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule over optimizer steps.

    Attributes:
        peak_lr: LR reached at the end of warm-up.
        total_steps: Optimizer steps in the run.
        warmup_steps: Steps of linear warm-up: step ``i < warmup_steps`` uses
            ``warmup_init_lr + (peak_lr - warmup_init_lr) * (i + 1) / warmup_steps``, so the last warm-up step
            reaches ``peak_lr`` and no step is spent at the initial LR.
        kind: ``cosine`` or ``linear`` decay to ``min_lr`` after warm-up, or ``constant``.
        min_lr: LR at the last step (decaying schedules).
        warmup_init_lr: LR the warm-up starts from (reached at step -1).
    """

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr: float = 0.0
    warmup_init_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, {self.total_steps}], got {self.warmup_steps}")
        if self.kind not in ("cosine", "linear", "constant"):
            raise ValueError(f"unknown schedule {self.kind!r}; use cosine, linear or constant")
        if self.min_lr > self.peak_lr:
            raise ValueError(f"min_lr {self.min_lr} is above the peak LR {self.peak_lr}")

    def lr_at(self, step: int) -> float:
        """LR used for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.warmup_init_lr + (self.peak_lr - self.warmup_init_lr) * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.peak_lr
        decay_steps = self.total_steps - self.warmup_steps
        progress = 1.0 if decay_steps <= 1 else min(1.0, (step - self.warmup_steps) / (decay_steps - 1))
        if self.kind == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            factor = 1.0 - progress
        return self.min_lr + (self.peak_lr - self.min_lr) * factor

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """A ``LambdaLR`` applying this schedule to ``optimizer`` (whose param groups start at ``peak_lr``)."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_at(step) / self.peak_lr)


def warmup_steps_from(warmup: float | int, total_steps: int) -> int:
    """Warm-up given as steps (an int >= 1) or as a ratio of the run (a float in [0, 1))."""
    if isinstance(warmup, float) and 0 <= warmup < 1:
        return round(warmup * total_steps)
    steps = int(warmup)
    if steps != warmup or steps < 0:
        raise ValueError(f"warmup must be a step count or a ratio in [0, 1), got {warmup}")
    return min(steps, total_steps)

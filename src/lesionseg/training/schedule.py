"""Learning-rate schedules: cosine over epochs, or linear warm-up then cosine over a wall-clock budget."""

from __future__ import annotations

import math
from typing import Callable

import torch


def time_cosine_lr(step: int, elapsed_s: float, budget_s: float, warmup_steps: int, lr: float,
                   eta_min: float) -> float:
    """The learning rate after `step` optimizer steps and `elapsed_s` seconds of a `budget_s` run."""
    frac = min(max(elapsed_s / budget_s, 0.0), 1.0)
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return max(eta_min, lr * warm * 0.5 * (1.0 + math.cos(math.pi * frac)))


class TimeCosine(torch.optim.lr_scheduler.LambdaLR):
    """cosine_time, stepped after every batch. `clock()` gives the run's elapsed training seconds; it is
    Lightning's Timer, the clock that also stops the run at trainer.max_minutes and whose state a
    checkpoint keeps, so a resumed run continues the schedule where it was cut."""

    def __init__(self, optimizer, clock: Callable[[], float], budget_s: float, warmup_steps: int,
                 eta_min: float):
        base = [g["lr"] for g in optimizer.param_groups]

        def factor(i):
            return lambda step: (
                time_cosine_lr(step, clock(), budget_s, warmup_steps, base[i], eta_min) / base[i]
            )

        super().__init__(optimizer, [factor(i) for i in range(len(base))])

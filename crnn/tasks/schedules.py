"""Per-step learning-rate schedules: linear warm-up, then cosine, multi-step or constant.

Each is the ``_target_`` of a ``_partial_`` config node (``conf/task/scheduler/``) and is called by
:meth:`crnn.tasks.base.BaseTask.configure_optimizers` as
``schedule(optimizer, total_steps=..., steps_per_epoch=...)``; it returns a
:class:`~torch.optim.lr_scheduler.LambdaLR` stepped once per optimisation step. Warm-up multiplies
the base learning rate by ``(step + 1) / warmup_steps`` for the first
``warmup_steps = round(warmup_epochs * steps_per_epoch)`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from crnn.constraints import Fraction, NonNegativeFloat, NonNegativeInt

__all__ = ["constant", "cosine", "multistep"]


def _with_warmup(
    optimizer: Optimizer, warmup_epochs: float, steps_per_epoch: int, after: Callable[[int], float]
) -> LambdaLR:
    warmup = int(round(warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        return (step + 1) / warmup if step < warmup else after(step - warmup)

    return LambdaLR(optimizer, factor)


def cosine(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: NonNegativeFloat = 0.0,
    min_lr_ratio: Fraction = 0.0,
) -> LambdaLR:
    """Warm-up, then half a cosine from the base rate to ``min_lr_ratio`` x it at ``total_steps``."""
    decay_steps = max(1, total_steps - int(round(warmup_epochs * steps_per_epoch)))

    def after(step: int) -> float:
        progress = min(1.0, step / decay_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return _with_warmup(optimizer, warmup_epochs, steps_per_epoch, after)


def multistep(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    milestones: list[NonNegativeInt],
    gamma: NonNegativeFloat = 0.1,
    warmup_epochs: NonNegativeFloat = 0.0,
) -> LambdaLR:
    """Warm-up, then the base rate x ``gamma`` once per epoch of ``milestones`` passed (counted from
    the start of training, warm-up included)."""
    warmup = int(round(warmup_epochs * steps_per_epoch))
    milestone_steps = sorted(m * steps_per_epoch for m in milestones)
    return _with_warmup(
        optimizer,
        warmup_epochs,
        steps_per_epoch,
        lambda step: gamma ** sum(step + warmup >= m for m in milestone_steps),
    )


def constant(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int, warmup_epochs: NonNegativeFloat = 0.0
) -> LambdaLR:
    """Warm-up, then the base rate."""
    return _with_warmup(optimizer, warmup_epochs, steps_per_epoch, lambda step: 1.0)

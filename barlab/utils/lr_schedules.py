"""Learning-rate schedules: plain functions of the step, and the schedulers the configs name.

A stage's ``scheduler`` config node is a ``_partial_`` of :func:`warmup_cosine_scheduler`; the
LightningModule completes it in ``configure_optimizers`` with its optimiser and the run's length.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

# ``scheduler`` config node, instantiated: (optimiser, total_steps=...) -> LR scheduler
SchedulerFactory = Callable[..., LRScheduler]

# the run length the schedules assume when the trainer sets no max_steps
DEFAULT_TOTAL_STEPS = 10_000


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier on the base learning rate: linear warm-up, then cosine decay to ``min_ratio``.

    step 0 gives 1/(warmup_steps+1) of the base rate; ``total_steps`` and later give ``min_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(optimizer: Optimizer, total_steps: int, warmup_steps: int,
                            min_lr_ratio: float) -> LambdaLR:
    """:func:`warmup_cosine` on every parameter group of ``optimizer``, stepped once per training step.

    Config: ``{_target_: barlab.utils.lr_schedules.warmup_cosine_scheduler, _partial_: true,
    warmup_steps: ..., min_lr_ratio: ...}``; ``optimizer`` and ``total_steps`` come from the module.
    """
    schedule = partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_lr_ratio)
    return LambdaLR(optimizer, schedule)


def planned_steps(trainer) -> int:
    """The trainer's ``max_steps``, or :data:`DEFAULT_TOTAL_STEPS` when it sets none (-1 or None)."""
    max_steps = getattr(trainer, "max_steps", None)
    return max_steps if max_steps and max_steps > 0 else DEFAULT_TOTAL_STEPS

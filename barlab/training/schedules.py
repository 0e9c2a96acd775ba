"""Learning-rate schedules as plain functions of the step."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier on the base learning rate: linear warm-up, then cosine decay to ``min_ratio``.

    step 0 gives 1/(warmup_steps+1) of the base rate; ``total_steps`` and later give ``min_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

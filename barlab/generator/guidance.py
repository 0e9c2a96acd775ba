"""Per-AR-step classifier-free guidance scale g_t."""

from __future__ import annotations

import math

from barlab.errors import ConfigError

SCHEDULES = ("constant", "linear", "power-cosine")


def guidance_scale(t: int, total: int, g: float, schedule: str, power: float = 1.0) -> float:
    """CFG scale for AR step ``t`` of ``total``.

    constant: g.  linear (paper default): 1 + (g − 1)·t/total.
    power-cosine: 1 + (g − 1)·(1 − cos(π·(t/total)^power))/2.
    """
    if total < 1:
        raise ValueError(f"total must be positive, got {total}")
    frac = t / total
    if schedule == "constant":
        return float(g)
    if schedule == "linear":
        return 1.0 + (g - 1.0) * frac
    if schedule == "power-cosine":
        return 1.0 + (g - 1.0) * (1.0 - math.cos(math.pi * frac**power)) / 2.0
    raise ConfigError("schedule", f"unknown schedule {schedule!r}, expected one of {', '.join(SCHEDULES)}",
                      fix="schedule=linear")

"""Repeated wall-clock timing: warm up, repeat, summarise as median and spread (min, max, IQR)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def device_sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a wall-clock reading covers it; a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timing_summary(seconds: list[float]) -> dict[str, float]:
    """Durations (n,) -> ``{median_s, min_s, max_s, q1_s, q3_s, iqr_s, n}``."""
    values = sorted(float(s) for s in seconds)
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {"median_s": statistics.median(values), "min_s": values[0], "max_s": values[-1],
            "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1, "n": len(values)}


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (device synchronised around
    each call); returns :func:`timing_summary` of the timed calls."""
    for _ in range(warmup):
        fn()
    device_sync(device)
    seconds = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        device_sync(device)
        seconds.append(time.perf_counter() - start)
    return timing_summary(seconds)


def per_item(stats: dict[str, float], items: int) -> dict[str, float]:
    """A :func:`timing_summary` dict divided by ``items`` (seconds per token, per image...)."""
    return {k: (v / items if k.endswith("_s") else v) for k, v in stats.items()}


def rate(stats: dict[str, float], items: int) -> dict[str, float]:
    """Items per second from a :func:`timing_summary` dict: the median, and the rates of the slowest and
    fastest repeats (``rate_min``, ``rate_max``)."""
    return {"rate": items / stats["median_s"], "rate_min": items / stats["max_s"],
            "rate_max": items / stats["min_s"]}

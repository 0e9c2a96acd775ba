"""Peak memory of one call. CUDA: the allocator's peak. CPU: torch's own allocation events
(``torch.profiler`` with ``profile_memory``: every allocation and free, summed in time order) and
the process's max-RSS high-water mark, which moves only when the call exceeds every earlier peak."""

from __future__ import annotations

import functools
import resource
from collections.abc import Callable

import torch

MB = 1e6


def _profiled_peak_bytes(fn: Callable[[], object]) -> int:
    """Bytes torch held at the worst moment of ``fn()`` beyond what it held before (CPU tensors)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        if str(event.device_type()).upper().endswith("CPU"):
            live += event.nbytes()
            peak = max(peak, live)
    return peak


@functools.cache
def _warm_profiler() -> None:
    """Start the profiler once, so that its own first-use allocations (~80 MB RSS) are not charged
    to the first measured call."""
    _profiled_peak_bytes(lambda: None)


def peak_memory(fn: Callable[[], object], device: torch.device, calls: int = 3) -> dict[str, float]:
    """Run ``fn`` (``calls`` times on a CPU); ``{"peak_mb": ..., "rss_delta_mb": ..., "method": ...}``
    (MB = 10^6 bytes).

    peak_mb: the largest extra memory torch allocated during a call (not counting tensors alive
    before it: weights, inputs). rss_delta_mb (CPU): growth of the process's max RSS, 0 if the calls
    stayed below an earlier peak. On a CPU the profiler's memory events can come out short: at
    ``bar_b`` width the MBM head's 625 MB of weight gradients are missing from the readings at some
    k, single-call and largest-of-3 alike (not yet explained), so the CPU figure is the largest over
    ``calls`` calls and still only a lower bound. The linear head's readings grow as its weights do.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return {"peak_mb": (torch.cuda.max_memory_allocated(device) - before) / MB, "rss_delta_mb": None,
                "method": "torch.cuda.max_memory_allocated"}
    _warm_profiler()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    peak = max(_profiled_peak_bytes(fn) for _ in range(max(1, calls)))
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": peak / MB, "rss_delta_mb": (rss_after - rss_before) * 1024 / MB,
            "method": "torch.profiler memory events + getrusage max RSS"}

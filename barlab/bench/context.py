"""What every benchmark gets: the size, the device, the timing settings and the results so far."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SIZES = ("ci", "real")


@dataclass
class BenchContext:
    """size: ``ci`` (seconds, tiny widths) or ``real``; warmup / repeats: untimed and timed calls of
    every measurement; results: the finished benchmarks of this run by name (``data`` reads the
    ``train_loop`` step rate from it); peaks: this run's matmul peaks in FLOP/s by dtype, measured
    once (:func:`barlab.bench.peak.peaks`)."""

    size: str
    device: torch.device
    warmup: int
    repeats: int
    seed: int = 0
    results: dict = field(default_factory=dict)
    peaks: dict = field(default_factory=dict)

    def pick(self, sizes: dict):
        """``sizes[self.size]``: a benchmark's settings for this run's size; ``sizes["real_cuda"]``
        instead of ``"real"`` on a CUDA device where the benchmark has one."""
        if self.size == "real" and self.device.type == "cuda" and "real_cuda" in sizes:
            return sizes["real_cuda"]
        return sizes[self.size]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if numerator is None or denominator in (None, 0):
        return None
    return float(numerator) / float(denominator)

"""Token orders for training with randomness annealing (RAR, paper §4.1).

With probability ``random_ratio(step)`` a training sample uses a random permutation of the L AR
positions, otherwise raster order. The ratio is 1 until ``start·total`` steps, falls linearly to 0
at ``end·total`` and stays 0 after that. Sampling always uses raster order.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_ratio(step: int | float, total: int | float, start: float = 0.5, end: float = 0.75) -> float:
    """Probability of a random order at training ``step`` of ``total`` (1 -> linear -> 0)."""
    begin, finish = start * total, end * total
    if step <= begin:
        return 1.0
    if step >= finish:
        return 0.0
    return 1.0 - (step - begin) / (finish - begin)


def sample_orders(batch: int, length: int, ratio: float, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """Orders (batch, length) long: each row a uniform random permutation of 0..length-1 with
    probability ``ratio``, else raster ``arange(length)``.

    Draws from ``generator`` (which must live on ``device``) in a fixed amount: ``batch`` uniforms
    for the choice, then ``batch·length`` for the permutations.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    pick = torch.rand(batch, generator=generator, device=device) < ratio
    perms = torch.rand(batch, length, generator=generator, device=device).argsort(dim=1)
    raster = torch.arange(length, device=device).expand(batch, length)
    return torch.where(pick[:, None], perms, raster)

"""Per-bit code-usage statistics for binary tokens.

Everything is per bit (O(k)) plus one ``torch.unique`` over the tokens of a batch; nothing
builds a histogram over the 2^k possible codes, so k = 256 is fine.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor


def binary_entropy(p: Tensor) -> Tensor:
    """Entropy in bits of Bernoulli(p), elementwise; 0 at p = 0 and p = 1."""
    p = p.double()
    q = 1.0 - p
    return -(torch.xlogy(p, p) + torch.xlogy(q, q)) / math.log(2.0)


def unique_count(bits: Tensor) -> int:
    """Number of distinct k-bit rows in ``bits`` of shape (N, k) (values {0,1})."""
    rows = (bits > 0.5).to(torch.uint8)
    k = rows.shape[1]
    pad = (-k) % 8
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))
    # Pack 8 bits per byte so the row-wise unique compares k/8 columns instead of k.
    weights = (2 ** torch.arange(8, device=rows.device)).to(torch.uint8)
    packed = (rearrange(rows, "n (c e) -> n c e", e=8) * weights).sum(dim=-1, dtype=torch.uint8)
    return int(torch.unique(packed, dim=0).shape[0])


def bit_statistics(bits: Tensor) -> dict[str, Tensor | int]:
    """Statistics of token bits of shape (..., k) with values in {0, 1}.

    Returns:
        usage: (k,) float64, P(bit = 1) over all tokens.
        entropy: (k,) float64, binary entropy of each bit, in bits (1 = perfectly balanced).
        mean_entropy, min_entropy: float64 scalars over the k bits.
        unique_fraction: float64 scalar, distinct codes / tokens in this batch.
        num_tokens: int, N = prod(leading dims).
    """
    if bits.ndim < 1 or bits.shape[-1] == 0:
        raise ValueError(f"bits must have shape (..., k) with k >= 1, got {tuple(bits.shape)}")
    flat = bits.detach().reshape(-1, bits.shape[-1])
    n = flat.shape[0]
    if n == 0:
        raise ValueError("bit_statistics needs at least one token")
    usage = (flat > 0.5).sum(dim=0, dtype=torch.float64) / n
    return usage_summary(usage, unique_count(flat) / n, n)


def usage_summary(usage: Tensor, unique_fraction: float, num_tokens: int) -> dict[str, Tensor | int]:
    """The statistics dict from per-bit usage (k,) float64 (see ``bit_statistics``)."""
    entropy = binary_entropy(usage)
    return {
        "usage": usage,
        "entropy": entropy,
        "mean_entropy": entropy.mean(),
        "min_entropy": entropy.min(),
        "unique_fraction": torch.tensor(unique_fraction, dtype=torch.float64),
        "num_tokens": num_tokens,
    }


class BitStatsAccumulator:
    """Accumulates per-bit counts across batches for epoch-level statistics.

    ``update(bits (..., k))`` adds the counts of ones and tokens; ``compute()`` returns the same keys
    as ``bit_statistics``, where ``unique_fraction`` is the mean of the per-batch unique fractions
    (a global distinct count would need all tokens in memory). Counts live on the device of the first
    ``update`` as int64.
    """

    def __init__(self, k: int):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.k = k
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.ones: Tensor | None = None
        self.num_tokens = 0
        self._unique_sum = 0.0
        self._batches = 0

    def update(self, bits: Tensor) -> None:
        """Add a batch of bits of shape (..., k)."""
        if bits.shape[-1] != self.k:
            raise ValueError(f"expected bits (..., {self.k}), got {tuple(bits.shape)}")
        flat = bits.detach().reshape(-1, self.k)
        if flat.shape[0] == 0:
            return
        ones = (flat > 0.5).sum(dim=0, dtype=torch.int64)
        self.ones = ones if self.ones is None else self.ones + ones.to(self.ones.device)
        self.num_tokens += flat.shape[0]
        self._unique_sum += unique_count(flat) / flat.shape[0]
        self._batches += 1

    def compute(self) -> dict[str, Tensor | int]:
        """Statistics over every token since the last ``reset`` (see ``bit_statistics``)."""
        if self.ones is None:
            raise RuntimeError("BitStatsAccumulator.compute() called before any update()")
        return usage_summary(self.ones.double() / self.num_tokens, self._unique_sum / self._batches, self.num_tokens)

"""How many bits the MBM head fixes at each of its unmasking steps within one token.

An allocation is a tuple of positive ints summing to k' (bits per AR step); entry s is the
number of bits fixed at step s. The paper's default for 16 bits is (2, 2, 5, 7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from barlab.errors import ConfigError
from barlab.utils.integers import check_int


def cosine_allocation(k: int, steps: int) -> tuple[int, ...]:
    """Cosine unmasking schedule: after step s (1-based) floor(k·cos(π/2·s/steps)) bits stay masked.

    The masked count is clamped so that every step fixes at least one bit; the result sums to k.
    ``cosine_allocation(16, 4) == (2, 3, 5, 6)``.
    """
    k = check_int(k, "k")
    steps = check_int(steps, "steps")
    if steps > k:
        raise ConfigError("steps", f"{steps} unmasking steps cannot each fix a bit of a {k}-bit token",
                          fix=f"steps={k} or fewer")
    remaining = [k]
    for s in range(1, steps + 1):
        cos_left = math.floor(k * math.cos(math.pi / 2 * s / steps) + 1e-9)
        # leave at least one bit for each later step, and fix at least one bit now
        remaining.append(min(max(cos_left, steps - s), remaining[-1] - 1))
    return tuple(a - b for a, b in zip(remaining[:-1], remaining[1:]))


def check_allocation(allocation: Sequence[int], k: int,
                     fix: str = "allocation=null (the head's own allocation)") -> tuple[int, ...]:
    """Return ``allocation`` as a tuple if it is a non-empty list of positive ints summing to k.

    Errors name ``allocation``; ``fix`` says what to set instead (the head's constructor: a cosine
    schedule; a sampling-time override: the head's own allocation).
    """
    if isinstance(allocation, (str, bytes)) or not isinstance(allocation, Sequence) or len(allocation) == 0:
        raise ConfigError("allocation", f"must be a non-empty list of positive ints, got {allocation!r}", fix=fix)
    alloc = tuple(check_int(a, "allocation", fix="allocation=null") for a in allocation)
    if sum(alloc) != k:
        raise ConfigError("allocation", f"{list(alloc)} sums to {sum(alloc)}, must sum to the {k} bits per step",
                          fix=fix)
    return alloc


def cumulative(allocation: Sequence[int]) -> tuple[int, ...]:
    """Prefix sums with a leading 0: cum[s] = bits fixed before step s; len = len(allocation) + 1."""
    out = [0]
    for a in allocation:
        out.append(out[-1] + a)
    return tuple(out)

"""The MBM head's training mask ratio r: one draw per token (BAR §4.2; the §5.4 ablations).

Rules (``dist``), each followed by the clamp r <- clamp(r, 1/k, 1):
    logit_normal (official): t ~ sigmoid(N(mean, std²)), r = 1 − t.
    uniform:                 r ~ U[1/k, 1].
    cosine (MaskGIT):        r = cos(π/2 · u), u ~ U(0, 1).
With ``full_mask_share`` p > 0, each token is then, with probability p (one Bernoulli draw per token, after
the rule's draw), fully masked: r = 1. At p = 0 no such number is drawn, so the official rule consumes
exactly N standard normals and nothing else.

The caller masks n = max(1, round(k·r)) of the token's k bits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from barlab.generator.heads.base import uniform

MASK_RATIO_DISTS = ("logit_normal", "uniform", "cosine")


def draw_mask_ratio(dist: str, n: int, k: int, mean: float = 0.0, std: float = 0.8,
                    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                    full_mask_share: float = 0.0) -> Tensor:
    """Mask ratios for ``n`` tokens of ``k`` bits -> r (n,) fp32 on ``device``, in [1/k, 1].

    ``mean``/``std``: μ and σ of the logit-normal rule (the others ignore them). Random numbers come from
    ``generator`` (on its own device; None = the global RNG): n for the rule (normals for logit_normal,
    uniforms otherwise), then n uniforms for the full-mask Bernoulli when ``full_mask_share`` > 0.
    """
    device = torch.device(device)
    if dist == "logit_normal":
        gen_device = generator.device if generator is not None else device
        z = torch.randn(n, generator=generator, device=gen_device, dtype=torch.float32).to(device)
        r = 1 - torch.sigmoid(z * std + mean)
    elif dist == "uniform":
        r = 1 / k + (1 - 1 / k) * uniform((n,), generator, device)
    elif dist == "cosine":
        r = torch.cos(math.pi / 2 * uniform((n,), generator, device))
    else:
        raise ValueError(f"mask ratio distribution must be one of {MASK_RATIO_DISTS}, got {dist!r}")
    r = r.clamp(min=1 / k, max=1.0)
    if full_mask_share > 0:
        full = uniform((n,), generator, device) < full_mask_share
        r = torch.where(full, torch.ones_like(r), r)
    return r

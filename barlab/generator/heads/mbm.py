"""Masked Bit Modeling head (BAR §4.2): an adaLN MLP that fills in masked bits of one token.

Training masks a random subset of each token's k' bits (mask ratio from a logit-normal draw) and
predicts all bits, weighting masked ones 1.0 and unmasked ones ``unmasked_weight``. Sampling
unmasks the bits over a few steps (``allocation``), MaskGIT-style, keeping the most confident.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.generator.heads.allocation import check_allocation, cosine_allocation, cumulative
from barlab.generator.heads.base import Guidance, Head, HeadOutput, fp32_region, gumbel, uniform
from barlab.generator.layers import GaussianFourier, RMSNorm, SwiGLU, modulate
from barlab.utils.integers import check_int

MASK = 2  # the [M] value of a bit


class MBMBlock(nn.Module):
    """``h + gate(s)·SwiGLU(modulate(RMSNorm(h), shift(s), scale(s)))``; h, s (N, W) -> (N, W)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = RMSNorm(width)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        self.mlp = SwiGLU(width, hidden)

    def forward(self, h: Tensor, s: Tensor) -> Tensor:
        shift, scale, gate = self.ada(s).chunk(3, dim=-1)
        return h + gate * self.mlp(modulate(self.norm(h), shift, scale))


class MBMHead(Head):
    """The paper's MBM head.

    Args:
        cond_dim: width of the backbone's per-token condition z (projected to ``width`` if different).
        bits_per_step: k'.
        width, depth, mlp_ratio: MLP width W, number of adaLN SwiGLU blocks, SwiGLU hidden = int(ratio·W).
        allocation: bits fixed at each sampling step (sums to k'); None -> ``cosine_allocation(k', steps)``.
        steps: number of unmasking steps when ``allocation`` is None.
        mask_ratio_std: std of the logit-normal draw of t (mask ratio r = 1 − t).
        unmasked_weight: loss weight of the bits that were not masked.
        fourier_dim: number of Gaussian Fourier frequencies for the mask-ratio embedding.
    """

    def __init__(self, cond_dim: int, bits_per_step: int, width: int = 2048, depth: int = 3,
                 mlp_ratio: float = 8 / 3, allocation: Sequence[int] | None = None, steps: int = 4,
                 mask_ratio_std: float = 0.8, unmasked_weight: float = 0.1, fourier_dim: int = 256):
        super().__init__(cond_dim, bits_per_step)
        k = self.bits_per_step
        width = check_int(width, "width")
        depth = check_int(depth, "depth")
        fourier_dim = check_int(fourier_dim, "fourier_dim")
        if not mlp_ratio > 0:
            raise ConfigError("mlp_ratio", f"must be positive, got {mlp_ratio!r}", fix="mlp_ratio=2.6667")
        if not mask_ratio_std > 0:
            raise ConfigError("mask_ratio_std", f"must be positive, got {mask_ratio_std!r}", fix="mask_ratio_std=0.8")
        if not unmasked_weight >= 0:
            raise ConfigError("unmasked_weight", f"must be >= 0, got {unmasked_weight!r}", fix="unmasked_weight=0.1")
        self.allocation = (check_allocation(allocation, k, fix="allocation=null (a cosine schedule over steps)")
                           if allocation is not None else cosine_allocation(k, check_int(steps, "steps")))
        self.width = width
        self.mask_ratio_std = float(mask_ratio_std)
        self.unmasked_weight = float(unmasked_weight)

        bit_dim = math.ceil(width / k)
        self.bit_embed = nn.Embedding(3, bit_dim)
        self.in_proj = nn.Linear(bit_dim * k, width)
        self.fourier = GaussianFourier(fourier_dim, scale=1.0)
        self.t_mlp = nn.Sequential(nn.Linear(self.fourier.out_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_proj = nn.Linear(self.cond_dim, width) if self.cond_dim != width else nn.Identity()
        self.in_norm = RMSNorm(width)
        self.blocks = nn.ModuleList(MBMBlock(width, int(mlp_ratio * width)) for _ in range(depth))
        self.final_norm = RMSNorm(width)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, 2 * k)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As the official BAR: trunc-normal(0.02) on every Linear and Embedding, zero biases, then
        adaLN-Zero on the modulations (the output Linear is not zeroed)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=0.02)
        for ada in [b.ada for b in self.blocks] + [self.final_ada]:
            nn.init.zeros_(ada[-1].weight)
            nn.init.zeros_(ada[-1].bias)

    def forward(self, bits: Tensor, cond: Tensor, ratio: Tensor) -> Tensor:
        """bits (N, k') in {0, 1, 2=[M]}, cond (N, cond_dim), ratio (N,) mask ratio -> fp32 logits (N, k', 2)."""
        with fp32_region(cond.device):
            e = self.in_proj(rearrange(self.bit_embed(bits.long()), "n k d -> n (k d)"))
            s = F.silu(self.t_mlp(self.fourier(ratio)) + self.cond_proj(cond.float()))
            h = self.in_norm(e)
            for block in self.blocks:
                h = block(h, s)
            shift, scale = self.final_ada(s).chunk(2, dim=-1)
            h = modulate(self.final_norm(h), shift, scale)
            return rearrange(self.out(h), "n (k two) -> n k two", two=2)

    def mask_tokens(self, bits: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Draw one training mask per token.

        t ~ sigmoid(N(0, std²)); r = clamp(1 − t, 1/k', 1); n = max(1, round(k'·r)) positions chosen
        uniformly at random. bits (N, k') {0,1} -> (masked_bits (N, k') long in {0,1,2},
        mask (N, k') bool, ratio (N,) fp32 = r).
        """
        n_tok, k = bits.shape
        t = torch.sigmoid(torch.randn(n_tok, generator=generator, device=_gen_device(generator, bits),
                                      dtype=torch.float32).to(bits.device) * self.mask_ratio_std)
        ratio = (1 - t).clamp(min=1 / k, max=1.0)
        n_mask = torch.round(k * ratio).long().clamp(min=1, max=k)
        rank = uniform((n_tok, k), generator, bits.device).argsort(dim=-1).argsort(dim=-1)
        mask = rank < rearrange(n_mask, "n -> n 1")
        masked = torch.where(mask, torch.full_like(bits, MASK, dtype=torch.long), bits.round().long())
        return masked, mask, ratio

    def loss(self, cond: Tensor, bits: Tensor, generator: torch.Generator | None = None) -> HeadOutput:
        """cond (N, cond_dim), bits (N, k') {0,1} -> weighted CE (1.0 masked, ``unmasked_weight`` unmasked)."""
        self._check_inputs(cond, bits)
        masked, mask, ratio = self.mask_tokens(bits, generator)
        logits = self(masked, cond, ratio)
        target = bits.round().long()
        ce = F.cross_entropy(rearrange(logits, "n k two -> n two k"), target, reduction="none")  # (N, k')
        w = torch.where(mask, 1.0, self.unmasked_weight).to(ce.dtype)
        loss = (ce * w).sum() / (w.sum() + 1e-8)
        correct = (logits.argmax(dim=-1) == target).float()
        acc = (correct * mask).sum() / mask.sum()
        metrics = {
            "mask_ratio": ratio.mean().detach(),
            "masked_fraction": mask.float().mean().detach(),
            "ce_masked": ((ce * mask).sum() / mask.sum()).detach(),
            "bit_accuracy_all": correct.mean().detach(),
        }
        return HeadOutput(loss=loss, bit_accuracy=acc.detach(), metrics=metrics)

    @torch.no_grad()
    def sample(self, cond: Tensor, uncond: Tensor | None, guidance: Guidance, temperature: float = 1.0,
               generator: torch.Generator | None = None,
               on_step: Callable[[int, Tensor], None] | None = None,
               allocation: Sequence[int] | None = None) -> Tensor:
        """Iterative unmasking over ``allocation`` steps (paper §4.2 pseudo-code).

        cond/uncond (N, cond_dim); guidance scalar or (N,). ``allocation``: bits fixed per step for
        this call (sums to k'; the official sampler's ``tokens_allocation``); None = ``self.allocation``.
        ``on_step(s, b)`` (optional) sees the partially fixed bits b (N, k') long in {0,1,2} after each
        step. -> bits (N, k') float {0,1}.
        """
        self._check_inputs(cond)
        n_tok, k = cond.shape[0], self.bits_per_step
        alloc = self.allocation if allocation is None else check_allocation(allocation, k)
        num_steps = len(alloc)
        cum = cumulative(alloc)
        b = torch.full((n_tok, k), MASK, dtype=torch.long, device=cond.device)
        for s in range(num_steps):
            ratio = torch.full((n_tok,), 1 - cum[s] / k, dtype=torch.float32, device=cond.device)
            tau = temperature * (1 - s / num_steps)
            logits = self._guided(lambda c, bits, r: self(bits, c, r), cond, uncond, guidance, b, ratio)
            fixed = b != MASK
            if tau > 0:
                logits_noisy = logits + tau * gumbel((n_tok, k, 2), generator, cond.device)
                conf_noise = tau * gumbel((n_tok, k), generator, cond.device)
            else:
                logits_noisy, conf_noise = logits, torch.zeros((n_tok, k), device=cond.device)
            x = torch.where(fixed, b, logits_noisy.argmax(dim=-1))
            if s == num_steps - 1:
                b = x
            else:
                conf = logits.gather(-1, rearrange(x, "n k -> n k 1"))[..., 0] + conf_noise
                conf = conf.masked_fill(fixed, math.inf)
                remask = conf.topk(k - cum[s + 1], dim=-1, largest=False).indices
                b = x.scatter(-1, remask, MASK)
            if on_step is not None:
                on_step(s, b)
        return b.float()


def _gen_device(generator: torch.Generator | None, like: Tensor) -> torch.device:
    return generator.device if generator is not None else like.device

"""Masked Bit Modeling head (BAR §4.2): an adaLN MLP that fills in masked bits of one token.

Training masks a random subset of each token's k' bits (mask ratio from a logit-normal draw) and
predicts all bits, weighting masked ones 1.0 and unmasked ones ``unmasked_weight``. Sampling
unmasks the bits over a few steps (``allocation``), MaskGIT-style, keeping the most confident.
The paper's masking ablations (§5.4: mask-ratio distribution, fully masked tokens, [M] vs random
fill) are constructor arguments whose defaults are the official configuration.
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
from barlab.generator.heads.mask_ratio import MASK_RATIO_DISTS, draw_mask_ratio
from barlab.generator.layers import GaussianFourier, RMSNorm, SwiGLU, modulate
from barlab.utils.integers import check_int

MASK = 2  # the [M] value of a bit
MASKED_FILLS = ("mask", "random")


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
        mask_ratio_dist: training mask-ratio rule (``mask_ratio.draw_mask_ratio``): ``logit_normal``
            (official: t ~ sigmoid(N(mask_ratio_mean, mask_ratio_std²)), r = 1 − t), ``uniform``
            (r ~ U[1/k', 1]) or ``cosine`` (MaskGIT: r = cos(π/2·u), u ~ U(0, 1)).
        mask_ratio_mean: μ of the logit-normal rule (official 0.0).
        full_mask_share: share of training tokens fully masked (r = 1) whatever the rule, one Bernoulli
            draw per token (official 0.0: none, and no extra random number is drawn).
        masked_fill: what a masked bit holds. ``mask`` (official, and the only fill the official code
            has): the [M] embedding, at training and sampling. ``random``: a random {0, 1} bit, fresh for
            every masked bit at training and at every sampling step (the head never sees [M]; it learns
            how many bits are corrupted from the ratio embedding, not which).
    """

    def __init__(self, cond_dim: int, bits_per_step: int, width: int = 2048, depth: int = 3,
                 mlp_ratio: float = 8 / 3, allocation: Sequence[int] | None = None, steps: int = 4,
                 mask_ratio_std: float = 0.8, unmasked_weight: float = 0.1, fourier_dim: int = 256,
                 mask_ratio_dist: str = "logit_normal", mask_ratio_mean: float = 0.0,
                 full_mask_share: float = 0.0, masked_fill: str = "mask"):
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
        if mask_ratio_dist not in MASK_RATIO_DISTS:
            raise ConfigError("mask_ratio_dist",
                              f"must be one of {', '.join(MASK_RATIO_DISTS)}, got {mask_ratio_dist!r}",
                              fix="mask_ratio_dist=logit_normal")
        if not _is_real(mask_ratio_mean) or not math.isfinite(mask_ratio_mean):
            raise ConfigError("mask_ratio_mean", f"must be a finite number, got {mask_ratio_mean!r}",
                              fix="mask_ratio_mean=0.0")
        if not _is_real(full_mask_share) or not 0 <= full_mask_share <= 1:
            raise ConfigError("full_mask_share", f"must be a number in [0, 1], got {full_mask_share!r}",
                              fix="full_mask_share=0.0")
        if masked_fill not in MASKED_FILLS:
            raise ConfigError("masked_fill", f"must be one of {', '.join(MASKED_FILLS)}, got {masked_fill!r}",
                              fix="masked_fill=mask")
        self.allocation = (check_allocation(allocation, k, fix="allocation=null (a cosine schedule over steps)")
                           if allocation is not None else cosine_allocation(k, check_int(steps, "steps")))
        self.width = width
        self.mask_ratio_std = float(mask_ratio_std)
        self.unmasked_weight = float(unmasked_weight)
        self.mask_ratio_dist = mask_ratio_dist
        self.mask_ratio_mean = float(mask_ratio_mean)
        self.full_mask_share = float(full_mask_share)
        self.masked_fill = masked_fill

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

        r from ``draw_mask_ratio`` (official: t ~ sigmoid(N(0, std²)), r = clamp(1 − t, 1/k', 1));
        n = max(1, round(k'·r)) positions chosen uniformly at random; they hold [M] (``masked_fill="mask"``)
        or random {0, 1} bits (``"random"``, drawn last). bits (N, k') {0,1} -> (masked_bits (N, k') long,
        in {0,1,2} or {0,1}; mask (N, k') bool; ratio (N,) fp32 = r).
        """
        n_tok, k = bits.shape
        ratio = draw_mask_ratio(self.mask_ratio_dist, n_tok, k, self.mask_ratio_mean, self.mask_ratio_std,
                                generator, bits.device, self.full_mask_share)
        n_mask = torch.round(k * ratio).long().clamp(min=1, max=k)
        rank = uniform((n_tok, k), generator, bits.device).argsort(dim=-1).argsort(dim=-1)
        mask = rank < rearrange(n_mask, "n -> n 1")
        masked = torch.where(mask, self._fill((n_tok, k), generator, bits.device), bits.round().long())
        return masked, mask, ratio

    def _fill(self, shape: tuple[int, int], generator: torch.Generator | None, device: torch.device) -> Tensor:
        """What masked bits hold, (N, k') long: MASK everywhere (``mask``, no random draw) or fresh random
        {0, 1} bits (``random``, one uniform per bit)."""
        if self.masked_fill == "random":
            return (uniform(shape, generator, device) < 0.5).long()
        return torch.full(shape, MASK, dtype=torch.long, device=device)

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
    def sample_with_steps(self, cond: Tensor, uncond: Tensor | None, guidance: Guidance,
                          temperature: float = 1.0, generator: torch.Generator | None = None,
                          allocation: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """``sample`` (same draws, same bits), and the unmasking step at which each bit was fixed:
        -> (bits (N, k') float {0,1}, step (N, k') long in [0, len(allocation)))."""
        step = torch.full((cond.shape[0], self.bits_per_step), -1, dtype=torch.long, device=cond.device)

        def record(s: int, b: Tensor) -> None:
            step.masked_fill_((step < 0) & (b != MASK), s)

        bits = self.sample(cond, uncond, guidance, temperature, generator, on_step=record, allocation=allocation)
        return bits, step

    @torch.no_grad()
    def first_step_bits(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Every bit from the fully masked input (r = 1) in one argmax step, as the sampler's first step
        sees it, without guidance: cond (N, cond_dim) -> bits (N, k') float {0,1}."""
        return self.sample(cond, None, 1.0, temperature=0.0, generator=generator, allocation=(self.bits_per_step,))

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

        The network sees the still-masked bits as training filled them: [M] (``masked_fill="mask"``, the
        official and only fill of the official sampler) or, with ``"random"``, fresh random {0, 1} bits at
        every step (drawn from ``generator`` before that step's Gumbel noise), with the same ratio input.
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
            fixed = b != MASK
            fed = b if self.masked_fill == "mask" else torch.where(
                fixed, b, self._fill((n_tok, k), generator, b.device))
            logits = self._guided(lambda c, bits, r: self(bits, c, r), cond, uncond, guidance, fed, ratio)
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


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)

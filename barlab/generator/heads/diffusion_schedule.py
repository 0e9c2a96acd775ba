"""Gaussian diffusion maths for the per-token diffusion head (MAR's ``diffusion/``, after IDDPM).

The cosine noise schedule, the even respacing of its timesteps for sampling, and the closed forms a
DDPM needs: forward noising q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0), the model's
p(x_{t-1} | x_t) from an epsilon prediction (fixed-large or learned-range variance), and the VLB term.

Every coefficient is computed once in float64 and cast to fp32 when indexed, as MAR does (its numpy
float64 arrays, read by ``_extract_into_tensor(...).float()``). Tensors of timesteps index the
schedule they were made for: a respaced schedule's t is in [0, S), its ``timestep_map[t]`` the original
step in [0, T) that the network sees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

COSINE_OFFSET = 0.008  # IDDPM's s: ᾱ(u) = cos²((u + s) / (1 + s) · π/2)
MAX_BETA = 0.999


def cosine_alpha_bar(u: float) -> float:
    """IDDPM's cosine ᾱ(u) = cos²((u + 0.008)/1.008 · π/2) at a time u in [0, 1] (unnormalised: ᾱ(0) < 1)."""
    return math.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2


def cosine_betas(num_steps: int, max_beta: float = MAX_BETA) -> Tensor:
    """β_t = min(1 − ᾱ((t+1)/T) / ᾱ(t/T), max_beta) for t in [0, T): (T,) float64.

    ᾱ_t = ∏_{s<=t} (1 − β_s) is then ᾱ((t+1)/T)/ᾱ(0) until the clip bites (the last step or so).
    """
    betas = [min(1 - cosine_alpha_bar((t + 1) / num_steps) / cosine_alpha_bar(t / num_steps), max_beta)
             for t in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64, device="cpu")


def space_timesteps(num_steps: int, count: int) -> list[int]:
    """``count`` of the ``num_steps`` original steps, evenly spaced from 0 to T−1 (MAR's
    ``space_timesteps(T, str(count))``, one section): step i is round(i·(T−1)/(count−1)), built by
    adding the fractional stride as MAR does (Python's round, half to even). -> sorted list."""
    if count > num_steps:
        raise ValueError(f"cannot take {count} steps out of {num_steps}")
    stride = 1.0 if count <= 1 else (num_steps - 1) / (count - 1)
    steps, position = [], 0.0
    for _ in range(count):
        steps.append(round(position))
        position += stride
    return sorted(set(steps))


def respaced_betas(betas: Tensor, timesteps: Sequence[int]) -> Tensor:
    """The betas of the chain that keeps only ``timesteps`` of ``betas`` (T,) float64, with the same ᾱ at
    each kept step: β'_i = 1 − ᾱ_{m_i} / ᾱ_{m_{i−1}} (ᾱ_{m_{−1}} = 1). -> (S,) float64."""
    alphas_cumprod = torch.cumprod(1.0 - betas.double(), dim=0)
    kept = alphas_cumprod[torch.as_tensor(list(timesteps), dtype=torch.long, device=betas.device)]
    previous = torch.cat([kept.new_ones(1), kept[:-1]])
    return 1.0 - kept / previous


class GaussianSchedule(nn.Module):
    """A DDPM chain's coefficients as float64 buffers (not saved in the state dict: they follow from
    the constructor's arguments), read back per row as fp32 by :meth:`coef`.

    Args:
        num_steps: T, the original chain's length (cosine schedule).
        timesteps: the original steps this chain keeps (None: all T). The kept chain has S = len(timesteps)
            steps; ``timestep_map`` (S,) long gives each kept step's original index.
    """

    def __init__(self, num_steps: int, timesteps: Sequence[int] | None = None):
        super().__init__()
        timesteps = list(range(num_steps)) if timesteps is None else sorted(timesteps)
        if len(timesteps) < 2:
            raise ValueError("a diffusion chain needs at least 2 steps (the posterior variance at t = 1 clips t = 0)")
        betas = respaced_betas(cosine_betas(num_steps), timesteps)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
        clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]])  # 0 at t = 0: use t = 1's
        fixed_large = torch.cat([posterior_variance[1:2], betas[1:]])
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": clipped.log(),
            "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
            "log_betas": betas.log(),
            "fixed_large_log_variance": fixed_large.log(),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)
        self.register_buffer("timestep_map", torch.tensor(timesteps, dtype=torch.long, device="cpu"),
                             persistent=False)
        self.num_steps = len(timesteps)

    def coef(self, name: str, t: Tensor) -> Tensor:
        """Buffer ``name`` at the per-row steps t (R,) long, as an fp32 column (R, 1)."""
        return rearrange(getattr(self, name)[t].float(), "r -> r 1")

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Forward noising x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε: x0, noise (R, D), t (R,) long -> x_t (R, D)."""
        return self.coef("sqrt_alphas_cumprod", t) * x0 + self.coef("sqrt_one_minus_alphas_cumprod", t) * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """q(x_{t−1} | x_t, x0): x0, x_t (R, D), t (R,) -> (mean (R, D), clipped log-variance (R, 1))."""
        mean = self.coef("posterior_mean_coef1", t) * x0 + self.coef("posterior_mean_coef2", t) * x_t
        return mean, self.coef("posterior_log_variance_clipped", t)

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x̂0 = √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε̂: x_t, eps (R, D), t (R,) -> (R, D)."""
        return self.coef("sqrt_recip_alphas_cumprod", t) * x_t - self.coef("sqrt_recipm1_alphas_cumprod", t) * eps

    def p_mean_variance(self, eps: Tensor, var_values: Tensor | None, x_t: Tensor,
                        t: Tensor, clip_x0: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The model's p(x_{t−1} | x_t) from its epsilon prediction.

        eps (R, D); var_values (R, D) in about [−1, 1] (learned range: log σ² = f·log β_t + (1−f)·log β̃_t,
        f = (v+1)/2) or None (fixed large: σ² = β_t, β̃_1 at t = 0); x_t (R, D); t (R,) long.
        ``clip_x0``: None (MAR) leaves x̂0 as it is; c > 0 clamps it to [−c, c] before the posterior mean
        (IDDPM's ``clip_denoised`` at ±c). -> (mean (R, D), log-variance (R, D) or (R, 1), x̂0 (R, D)).
        """
        if var_values is None:
            log_variance = self.coef("fixed_large_log_variance", t)
        else:
            frac = (var_values + 1) / 2
            max_log, min_log = self.coef("log_betas", t), self.coef("posterior_log_variance_clipped", t)
            log_variance = frac * max_log + (1 - frac) * min_log
        x0 = self.predict_x0(x_t, t, eps)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        mean, _ = self.q_posterior(x0, x_t, t)
        return mean, log_variance, x0


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats, elementwise (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Φ(x) by the tanh approximation 0.5·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (IDDPM's)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(bin of x) in nats under N(mean, e^{2·log_scale}), bins of width 2/255 on [−1, 1] with open
    end bins (IDDPM's decoder for 8-bit images, which MAR keeps for its continuous tokens).
    x, mean (R, D), log_scale broadcastable -> (R, D)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vb_term(schedule: GaussianSchedule, x0: Tensor, x_t: Tensor, t: Tensor, mean: Tensor,
            log_variance: Tensor) -> Tensor:
    """One VLB term per row in bits per channel: KL(q(x_{t−1}|x_t, x0) || p(x_{t−1}|x_t)) for t > 0,
    the decoder's −log p(x0 | x_1) at t = 0 (IDDPM's ``_vb_terms_bpd``).

    x0, x_t, mean (R, D); log_variance (R, D) or (R, 1); t (R,) long -> (R,).
    """
    true_mean, true_log_variance = schedule.q_posterior(x0, x_t, t)
    kl = normal_kl(true_mean, true_log_variance, mean, log_variance).mean(dim=-1) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_variance).mean(dim=-1) / math.log(2.0)
    return torch.where(t == 0, nll, kl)

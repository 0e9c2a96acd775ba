"""Per-token diffusion head (MAR's Diffusion Loss, Li et al. 2024): a small denoising MLP over one
continuous token, conditioned on the backbone's z.

The continuous counterpart of the bit heads: instead of logits over k' bits, the head models a token
x0 (N, D) of D real channels with a DDPM (cosine schedule over ``train_steps``, epsilon prediction,
learned-range variance trained by the VLB as IDDPM), and samples it by ancestral sampling over
``sampling_steps`` evenly respaced steps. Schedule maths: ``diffusion_schedule``.

Same weights, inputs and noise give MAR's network output, loss, gradients and samples bit for bit (CPU,
fp32). Where it differs from MAR: all noise comes from ``generator``, N rows per step whatever the guidance
(MAR draws 2N under CFG and discards the unconditional half's chain), none at the last step nor at τ = 0
(MAR draws it and multiplies by 0); guidance may be per row; no loss mask (every token counts); the head
always runs in fp32 (MAR trains and samples under fp16 autocast); ``learn_sigma=False`` (fixed-large σ²)
is an option MAR's DiffLoss does not expose; respacing takes one step count only (no "ddimN" or sections).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.generator.heads.base import Guidance, Head, HeadOutput, apply_cfg, fp32_region, is_unit_guidance
from barlab.generator.heads.diffusion_schedule import GaussianSchedule, space_timesteps, vb_term
from barlab.generator.layers import modulate
from barlab.utils.integers import check_int


def normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard normal fp32 noise of ``shape`` drawn from ``generator`` (on its own device), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features ``[cos(t·f), sin(t·f)]``, f_j = max_period^(−j/half), j < half = dim // 2,
    zero-padded to ``dim`` when odd (GLIDE/DiT/MAR): t (R,) (any dtype) -> (R, dim) fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = rearrange(t.float(), "r -> r 1") * rearrange(freqs, "f -> 1 f")
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class DenoiserBlock(nn.Module):
    """``x + gate(y)·MLP(modulate(LayerNorm(x), shift(y), scale(y)))``, MLP = Linear-SiLU-Linear;
    x, y (R, W) -> (R, W) (MAR's ResBlock)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale, gate = self.ada(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class DenoiserMLP(nn.Module):
    """MAR's SimpleMLPAdaLN: x_t (R, D), t (R,) original step, z (R, cond_dim) -> (R, out_dim).

    h = in_proj(x_t); y = t_embed(sinusoid(t)) + cond_proj(z); ``depth`` adaLN ResBlocks on h with y;
    DiT final layer: out(modulate(LayerNorm(h) without affine, shift(y), scale(y))).
    """

    def __init__(self, channels: int, cond_dim: int, width: int, depth: int, out_dim: int, frequency_dim: int):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.in_proj = nn.Linear(channels, width)
        self.t_embed = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_proj = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(DenoiserBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As MAR: xavier-uniform weights and zero biases on every Linear, N(0, 0.02²) on the timestep MLP's
        weights, then zero adaLN modulations and a zero output layer (the head starts at ε̂ = 0, v = 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        for layer in [b.ada[-1] for b in self.blocks] + [self.final_ada[-1], self.out]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        h = self.in_proj(x)
        y = self.t_embed(timestep_embedding(t, self.frequency_dim)) + self.cond_proj(z)
        for block in self.blocks:
            h = block(h, y)
        shift, scale = self.final_ada(y).chunk(2, dim=-1)
        return self.out(modulate(self.final_norm(h), shift, scale))


class DiffusionHead(Head):
    """MAR's per-token Diffusion Loss as a head.

    Args:
        cond_dim: width of the backbone's per-token condition z.
        bits_per_step: D, the number of continuous channels of one AR step's token (the wiring passes
            the token width under the bit heads' name; here the "bits" tensors are real-valued (N, D)).
        width, depth: the denoiser MLP's width and number of adaLN ResBlocks (MAR: 1024 x 3).
        train_steps: T, steps of the cosine schedule used for training (MAR: 1000).
        sampling_steps: S <= T, evenly respaced steps of ancestral sampling (MAR: "100").
        batch_mul: timesteps drawn per token per training step; tokens and z are tiled this many times
            (MAR's ``diffusion_batch_mul``: 4).
        learn_sigma: True (MAR): the network also outputs v (N, D) in about [−1, 1] interpolating log σ²
            between log β̃_t and log β_t, trained by the VLB term (IDDPM's hybrid loss, ε frozen in it);
            False: ε only, σ² = β_t (fixed large).
        frequency_dim: sinusoidal timestep features fed to the timestep MLP (MAR: 256).
    """

    token_type = "continuous"  # real-valued tokens: the generator stage pairs it with a continuous tokenizer

    def __init__(self, cond_dim: int, bits_per_step: int, width: int = 1024, depth: int = 3,
                 train_steps: int = 1000, sampling_steps: int = 100, batch_mul: int = 4,
                 learn_sigma: bool = True, frequency_dim: int = 256):
        super().__init__(cond_dim, bits_per_step)
        width = check_int(width, "width", fix="width=1024")
        depth = check_int(depth, "depth", fix="depth=3")
        train_steps = check_int(train_steps, "train_steps", minimum=2, fix="train_steps=1000")
        sampling_steps = check_int(sampling_steps, "sampling_steps", minimum=2, fix="sampling_steps=100")
        if sampling_steps > train_steps:
            raise ConfigError("sampling_steps", f"must be <= train_steps ({train_steps}), got {sampling_steps}",
                              fix=f"sampling_steps={min(100, train_steps)}")
        self.batch_mul = check_int(batch_mul, "batch_mul", fix="batch_mul=4")
        if not isinstance(learn_sigma, bool):
            raise ConfigError("learn_sigma", f"must be true or false, got {learn_sigma!r}", fix="learn_sigma=true")
        frequency_dim = check_int(frequency_dim, "frequency_dim", fix="frequency_dim=256")
        self.learn_sigma = learn_sigma
        self.train_steps, self.sampling_steps = train_steps, sampling_steps
        channels = self.bits_per_step
        self.net = DenoiserMLP(channels, self.cond_dim, width, depth, 2 * channels if learn_sigma else channels,
                               frequency_dim)
        self.train_schedule = GaussianSchedule(train_steps)
        self.sample_schedule = GaussianSchedule(train_steps, space_timesteps(train_steps, sampling_steps))

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> tuple[Tensor, Tensor | None]:
        """x_t (R, D), t (R,) long original step in [0, T), cond (R, cond_dim) -> fp32 (ε̂ (R, D),
        v (R, D) or None without ``learn_sigma``)."""
        with fp32_region(cond.device):
            out = self.net(x_t.float(), t, cond.float())
        if not self.learn_sigma:
            return out, None
        eps, var_values = out.chunk(2, dim=-1)
        return eps, var_values

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Forward noising on the training chain: x0, noise (R, D), t (R,) long in [0, T) -> x_t (R, D)."""
        return self.train_schedule.q_sample(x0, t, noise)

    def loss(self, cond: Tensor, bits: Tensor, generator: torch.Generator | None = None,
             t: Tensor | None = None, noise: Tensor | None = None) -> HeadOutput:
        """MAR's diffusion loss on tokens x0 = ``bits`` (N, D) float given cond (N, cond_dim).

        Rows are tiled ``batch_mul`` times (``(m n) d``, as MAR's ``.repeat``) to R = batch_mul·N; each row
        draws t ~ U{0..T−1} then ε ~ N(0, I) from ``generator`` unless ``t`` (R,) long / ``noise`` (R, D)
        are given. Per row: mse = mean_D (ε − ε̂)², plus with ``learn_sigma`` vb = the VLB term in bits
        per channel with ε̂ detached (``diffusion_schedule.vb_term``). loss = mean over rows of mse + vb.

        ``bit_accuracy``: there are no bits; it holds the fraction of channels where the one-step estimate
        x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t has the sign of x0, over all R rows (in [0, 1], never NaN; about
        0.5 at large t, near 1 at small t for a good model). metrics: ``mse`` and, when learned, ``vb``.
        """
        self._check_inputs(cond, bits)
        rows = self.batch_mul * cond.shape[0]
        x0 = repeat(bits.float(), "n d -> (m n) d", m=self.batch_mul)
        z = repeat(cond, "n c -> (m n) c", m=self.batch_mul)
        if t is None:
            gen_device = generator.device if generator is not None else cond.device
            t = torch.randint(0, self.train_steps, (rows,), generator=generator, device=gen_device).to(cond.device)
        if noise is None:
            noise = normal(tuple(x0.shape), generator, cond.device)
        if tuple(t.shape) != (rows,) or tuple(noise.shape) != tuple(x0.shape):
            raise ValueError(f"t must be ({rows},) and noise {tuple(x0.shape)} (batch_mul·N rows), "
                             f"got {tuple(t.shape)} and {tuple(noise.shape)}")
        schedule = self.train_schedule
        with fp32_region(cond.device):
            x_t = schedule.q_sample(x0, t, noise)
            eps, var_values = self(x_t, schedule.timestep_map[t], z)
            mse = ((noise - eps) ** 2).mean(dim=-1)
            per_row = mse
            metrics = {"mse": mse.mean().detach()}
            if var_values is not None:
                mean, log_variance, _ = schedule.p_mean_variance(eps.detach(), var_values, x_t, t)
                vb = vb_term(schedule, x0, x_t, t, mean, log_variance)
                per_row = mse + vb
                metrics["vb"] = vb.mean().detach()
            x0_hat = schedule.predict_x0(x_t, t, eps.detach())
            sign_acc = ((x0_hat > 0) == (x0 > 0)).float().mean()
        return HeadOutput(loss=per_row.mean(), bit_accuracy=sign_acc.detach(), metrics=metrics)

    def guided(self, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor | None,
               guidance: Guidance) -> tuple[Tensor, Tensor | None]:
        """The network under CFG, as MAR's ``forward_with_cfg``: ε̂ = ε̂_u + g·(ε̂_c − ε̂_u) (``apply_cfg``:
        g scalar or (N,), rows with g == 1 get ε̂_c exactly), v from the conditional half only.
        uncond None or g == 1: the conditional forward alone. x_t (N, D), t (N,) original steps -> (ε̂, v)."""
        if uncond is None or is_unit_guidance(guidance):
            return self(x_t, t, cond)
        if self.fuse_cfg:
            eps, var_values = self(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]))
            (eps_c, eps_u), var_c = eps.chunk(2), None if var_values is None else var_values.chunk(2)[0]
        else:
            eps_c, var_c = self(x_t, t, cond)
            eps_u, _ = self(x_t, t, uncond)
        return apply_cfg(eps_c, eps_u, guidance), var_c

    @torch.no_grad()
    def sample(self, cond: Tensor, uncond: Tensor | None, guidance: Guidance,
               temperature: float = 1.0, generator: torch.Generator | None = None,
               clip_x0: float | None = None) -> Tensor:
        """Ancestral sampling over the S respaced steps (MAR's ``p_sample_loop``; MAR never clips x̂0).

        ``clip_x0`` (``sampling.clip_x0``): None as MAR; c > 0 clamps the predicted x̂0 to [−c, c] at every
        step. The first step, at ᾱ_T ≈ 1e-8, divides ε̂'s error by √ᾱ_T ≈ 1e-4: a denoiser trained briefly
        sends x̂0 to ±1e3 there and the chain never comes back; on unit-std tokens c = 4 keeps it in range.

        cond/uncond (N, cond_dim); guidance scalar or (N,). From x ~ N(0, I) (N, D), for i = S−1 … 0:
        (ε̂, v) = ``guided`` at the original step ``timestep_map[i]``; x = mean_i + τ·σ_i·ξ_i, ξ_i ~ N(0, I),
        no noise at i = 0 (and none drawn then, nor at τ = 0). All noise is N rows from ``generator``,
        whatever the guidance. -> tokens (N, D) fp32.
        """
        self._check_inputs(cond)
        if clip_x0 is not None and not (isinstance(clip_x0, (int, float)) and not isinstance(clip_x0, bool)
                                        and clip_x0 > 0):
            raise ConfigError("clip_x0", f"must be a positive number or null, got {clip_x0!r}", fix="clip_x0=4")
        schedule = self.sample_schedule
        n_tok = cond.shape[0]
        x = normal((n_tok, self.bits_per_step), generator, cond.device)
        with fp32_region(cond.device):
            for i in reversed(range(schedule.num_steps)):
                t = torch.full((n_tok,), i, dtype=torch.long, device=cond.device)
                eps, var_values = self.guided(x, schedule.timestep_map[t], cond, uncond, guidance)
                mean, log_variance, _ = schedule.p_mean_variance(eps, var_values, x, t, clip_x0)
                if i > 0 and temperature != 0:
                    x = mean + torch.exp(0.5 * log_variance) * normal(tuple(x.shape), generator, x.device) * temperature
                else:
                    x = mean
        return x

"""The per-token diffusion head (MAR's Diffusion Loss): schedule, loss and sampler against hand computations.

The hand computations below rebuild the cosine schedule from its formula in Python floats, independently of
``barlab.generator.heads.diffusion_schedule``. Equivalence with MAR's own code (same weights, same noise) was
checked outside the repository; these tests pin the maths.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from barlab.errors import ConfigError
from barlab.generator import DiffusionHead
from barlab.generator.heads.diffusion_schedule import GaussianSchedule, space_timesteps

T = 1000


def alpha_bar_fn(u: float) -> float:
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


def hand_betas(num_steps: int = T) -> list[float]:
    return [min(1 - alpha_bar_fn((t + 1) / num_steps) / alpha_bar_fn(t / num_steps), 0.999) for t in range(num_steps)]


def hand_alpha_bars(num_steps: int = T) -> list[float]:
    out, prod = [], 1.0
    for b in hand_betas(num_steps):
        prod *= 1 - b
        out.append(prod)
    return out


def randomize(head: DiffusionHead, seed: int = 0, scale: float = 0.3) -> None:
    """Random weights everywhere (undo the zero init of the adaLN and output layers)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


# ---------------------------------------------------------------- schedule

def test_q_sample_is_sqrt_alpha_bar_x0_plus_sqrt_one_minus_alpha_bar_eps():
    head = DiffusionHead(4, 3, width=8, depth=1)
    x0 = torch.tensor([[0.5, -1.0, 2.0]] * 3)
    noise = torch.tensor([[1.0, 0.25, -0.5]] * 3)
    t = torch.tensor([0, 500, 999])
    # ᾱ_t = ᾱ((t+1)/T) / ᾱ(0) where β is not clipped; β_999 = 1 − ᾱ(1)/ᾱ(0.999) ≈ 1 is clipped to 0.999
    expected_ab = [alpha_bar_fn(1 / T) / alpha_bar_fn(0), alpha_bar_fn(501 / T) / alpha_bar_fn(0),
                   alpha_bar_fn(999 / T) / alpha_bar_fn(0) * (1 - 0.999)]
    ab = torch.tensor(expected_ab, dtype=torch.float64)[:, None]
    expected = ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()
    got = head.q_sample(x0, t, noise)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), expected, rtol=1e-6, atol=1e-7)
    assert expected_ab[0] > 0.9999 and expected_ab[2] < 1e-7  # t = 0 nearly clean, t = 999 nearly pure noise


def test_respacing_keeps_every_step_and_spaces_100_evenly():
    full = GaussianSchedule(T, space_timesteps(T, T))
    assert full.timestep_map.tolist() == list(range(T))
    assert torch.allclose(full.betas, torch.tensor(hand_betas(), dtype=torch.float64), rtol=1e-12, atol=1e-15)
    head = DiffusionHead(4, 2, width=8, depth=1, sampling_steps=T)
    assert torch.allclose(head.sample_schedule.betas, torch.tensor(hand_betas(), dtype=torch.float64), rtol=1e-12)

    # MAR's space_timesteps(1000, "100"): one section, step i at round(i·999/99) (round half to even)
    expected_map = [round(Fraction(i * (T - 1), 99)) for i in range(100)]
    assert space_timesteps(T, 100) == expected_map
    spaced = DiffusionHead(4, 2, width=8, depth=1, sampling_steps=100).sample_schedule
    assert spaced.timestep_map.tolist() == expected_map
    assert expected_map[:7] == [0, 10, 20, 30, 40, 50, 61] and expected_map[-1] == 999
    # the respaced chain keeps ᾱ at the kept steps: β'_i = 1 − ᾱ_{m_i}/ᾱ_{m_{i−1}}
    ab = hand_alpha_bars()
    hand = [1 - ab[expected_map[0]]] + [1 - ab[b] / ab[a] for a, b in zip(expected_map, expected_map[1:])]
    assert torch.allclose(spaced.betas, torch.tensor(hand, dtype=torch.float64), rtol=1e-10)


# ---------------------------------------------------------------- loss

def test_loss_on_fixed_t_and_noise_by_hand():
    n, d, c, bm = 3, 2, 5, 2
    head = DiffusionHead(c, d, width=16, depth=2, batch_mul=bm)
    randomize(head, scale=0.2)
    gen = torch.Generator().manual_seed(3)
    cond = torch.randn(n, c, generator=gen)
    tokens = torch.tensor([[0.3, -0.7], [1.2, 0.1], [-1.5, 0.9]])  # beyond ±0.999: the decoder's open bins
    t = torch.tensor([0, 1, 500, 999, 250, 0])
    noise = torch.randn(bm * n, d, generator=gen)
    out = head.loss(cond, tokens, t=t, noise=noise)

    betas, ab = hand_betas(), hand_alpha_bars()
    x0 = tokens.double().repeat(bm, 1)  # rows tiled (m n), as MAR's .repeat
    z = cond.repeat(bm, 1)
    x_t = torch.stack([math.sqrt(ab[s]) * x0[r] + math.sqrt(1 - ab[s]) * noise[r].double()
                       for r, s in enumerate(t.tolist())])
    with torch.no_grad():
        raw = head.net(x_t.float(), t, z).double()
    eps, v = raw[:, :d], raw[:, d:]
    mse = ((noise.double() - eps) ** 2).mean(dim=1)

    def phi(x):  # IDDPM's tanh approximation of the normal CDF
        return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    vb = []
    for r, s in enumerate(t.tolist()):
        ab_prev = ab[s - 1] if s > 0 else 1.0
        post_var = [betas[k] * (1 - (ab[k - 1] if k else 1.0)) / (1 - ab[k]) for k in (1, s)]
        log_post = math.log(post_var[0] if s == 0 else post_var[1])       # clipped: β̃_1 at t = 0
        coef1 = betas[s] * math.sqrt(ab_prev) / (1 - ab[s])
        coef2 = (1 - ab_prev) * math.sqrt(1 - betas[s]) / (1 - ab[s])
        x0_hat = (x_t[r] - math.sqrt(1 - ab[s]) * eps[r]) / math.sqrt(ab[s])
        mu_model = coef1 * x0_hat + coef2 * x_t[r]
        mu_true = coef1 * x0[r] + coef2 * x_t[r]
        frac = (v[r] + 1) / 2
        log_var = frac * math.log(betas[s]) + (1 - frac) * log_post
        if s > 0:  # KL(N(μ̃, β̃) || N(μ, σ²)) in bits, mean over channels
            kl = 0.5 * (-1 + log_var - log_post + torch.exp(log_post - log_var) + (mu_true - mu_model) ** 2
                        * torch.exp(-log_var))
            vb.append(kl.mean() / math.log(2))
        else:  # −log P(x0's 2/255 bin) under N(μ, σ²), open bins beyond ±0.999, in bits
            inv = torch.exp(-0.5 * log_var)
            up, lo = phi(inv * (x0[r] - mu_model + 1 / 255)), phi(inv * (x0[r] - mu_model - 1 / 255))
            logp = torch.where(x0[r] < -0.999, up.clamp(min=1e-12).log(),
                               torch.where(x0[r] > 0.999, (1 - lo).clamp(min=1e-12).log(),
                                           (up - lo).clamp(min=1e-12).log()))
            vb.append(-logp.mean() / math.log(2))
    vb = torch.stack(vb)
    assert vb[1:5].min() > 0 and torch.isfinite(vb).all()
    assert torch.allclose(out.metrics["mse"].double(), mse.mean(), rtol=1e-5)
    assert torch.allclose(out.metrics["vb"].double(), vb.mean(), rtol=1e-4)
    assert torch.allclose(out.loss.double(), (mse + vb).mean(), rtol=1e-4)
    # bit_accuracy stand-in: sign agreement of x̂0 with x0
    x0_hat = (x_t - (1 - torch.tensor(ab)[t]).sqrt()[:, None] * eps) / torch.tensor(ab)[t].sqrt()[:, None]
    assert torch.allclose(out.bit_accuracy.double(), ((x0_hat > 0) == (x0 > 0)).double().mean())


def test_vb_term_does_not_train_the_eps_output():
    """The VLB term sees ε̂ detached (IDDPM's hybrid loss): the ε rows of the output layer get the MSE gradient."""
    n, d, c = 4, 3, 5
    head = DiffusionHead(c, d, width=16, depth=1, batch_mul=1)
    randomize(head, scale=0.2)
    gen = torch.Generator().manual_seed(4)
    cond, tokens = torch.randn(n, c, generator=gen), torch.randn(n, d, generator=gen)
    t, noise = torch.tensor([3, 40, 200, 700]), torch.randn(n, d, generator=gen)
    out = head.loss(cond, tokens, t=t, noise=noise)
    out.loss.backward()
    full = head.net.out.weight.grad.clone()
    head.zero_grad()
    out = head.loss(cond, tokens, t=t, noise=noise)
    with torch.no_grad():
        x_t = head.q_sample(tokens, t, noise)
    eps = head.net(x_t, t, cond)[:, :d]
    ((noise - eps) ** 2).mean(dim=-1).mean().backward()
    assert torch.allclose(full[:d], head.net.out.weight.grad[:d], rtol=1e-5, atol=1e-7)
    assert full[d:].abs().sum() > 0  # the variance rows are trained (by the VLB alone)


def test_loss_draws_batch_mul_timesteps_per_token():
    head = DiffusionHead(4, 2, width=8, depth=1, batch_mul=4)
    seen = {}
    original = head.net.forward

    def spy(x, t, z):
        seen["t"], seen["z"] = t, z
        return original(x, t, z)

    head.net.forward = spy
    cond = torch.randn(3, 4)
    head.loss(cond, torch.randn(3, 2), generator=torch.Generator().manual_seed(0))
    assert seen["t"].shape == (12,) and 0 <= seen["t"].min() and seen["t"].max() < T
    assert torch.equal(seen["z"], cond.repeat(4, 1))
    with pytest.raises(ValueError, match=r"t must be \(12,\)"):
        head.loss(cond, torch.randn(3, 2), t=torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------- sampler

def test_sampler_recovers_a_gaussian_target(monkeypatch):
    """With the exact optimal ε̂ for data N(m, s²) (x_t ~ N(√ᾱ m, ᾱ s² + 1 − ᾱ), so E[ε | x_t] =
    √(1−ᾱ)(x_t − √ᾱ m)/(ᾱ s² + 1 − ᾱ)), 100 respaced steps with σ² = β_t draw from about N(m, s²)."""
    m, s, n = 1.5, 0.5, 20000
    head = DiffusionHead(4, 1, width=8, depth=1, learn_sigma=False, sampling_steps=100)
    alpha_bars = torch.tensor(hand_alpha_bars())

    def optimal_eps(x, t, z):  # t: the original step (the sampler maps its 100 steps through timestep_map)
        a = alpha_bars[t].float()[:, None]
        return (1 - a).sqrt() * (x - a.sqrt() * m) / (a * s * s + 1 - a)

    monkeypatch.setattr(head.net, "forward", optimal_eps)
    x = head.sample(torch.zeros(n, 4), None, 1.0, generator=torch.Generator().manual_seed(0))
    # Tolerances: the Monte Carlo standard errors are s/√n = 0.0035 (mean) and s/√(2n) = 0.0025 (std); the
    # sampler itself is exact in the mean and, the chain being linear-Gaussian, its output std can be
    # propagated exactly: 0.5046 (fixed-large variance over 100 steps adds ~1%). mean: 4 s.e.; std: bias + 4 s.e.
    assert abs(x.mean().item() - m) < 0.015
    assert abs(x.std().item() - s) < 0.02
    # τ = 0 follows the mean path: every sample at m
    greedy = head.sample(torch.zeros(8, 4), None, 1.0, temperature=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(greedy, torch.full_like(greedy, m), atol=1e-3)
    # τ = 0.5 scales the added noise: a much narrower spread, same centre
    cold = head.sample(torch.zeros(n, 4), None, 1.0, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert abs(cold.mean().item() - m) < 0.015 and 0.05 < cold.std().item() < 0.4


def make_cfg_head(fuse: bool = True) -> tuple[DiffusionHead, torch.Tensor, torch.Tensor]:
    head = DiffusionHead(6, 3, width=16, depth=2, sampling_steps=20)
    randomize(head, scale=0.15)
    head.fuse_cfg = fuse
    gen = torch.Generator().manual_seed(1)
    return head, torch.randn(10, 6, generator=gen), torch.randn(10, 6, generator=gen)


@pytest.mark.parametrize("fuse", [True, False])
def test_unit_guidance_is_the_conditional_path(fuse):
    head, cond, uncond = make_cfg_head(fuse)

    def run(u, g, tau=1.0):
        return head.sample(cond, u, g, temperature=tau, generator=torch.Generator().manual_seed(7))

    ref = run(None, 1.0)
    assert torch.isfinite(ref).all()
    assert torch.equal(run(uncond, 1.0), ref)
    assert torch.equal(run(uncond, torch.tensor(1.0)), ref)
    assert torch.equal(run(None, 3.0), ref)  # no uncond: guidance has nothing to mix
    assert not torch.allclose(run(uncond, 3.0), ref, atol=1e-3)
    assert not torch.allclose(run(None, 1.0, tau=0.5), ref, atol=1e-3)


@pytest.mark.parametrize("fuse", [True, False])
def test_per_row_guidance(fuse):
    head, cond, uncond = make_cfg_head(fuse)
    g = torch.where(torch.arange(10) % 2 == 0, 1.0, 3.0)
    mixed = head.sample(cond, uncond, g, generator=torch.Generator().manual_seed(7))
    ref = head.sample(cond, None, 1.0, generator=torch.Generator().manual_seed(7))
    three = head.sample(cond, uncond, 3.0, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(mixed[0::2], ref[0::2], rtol=1e-5, atol=1e-6)
    if not fuse:  # the conditional forward is the very same call: bit for bit
        assert torch.equal(mixed[0::2], ref[0::2])
    assert torch.allclose(mixed[1::2], three[1::2], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mixed[1::2], ref[1::2], atol=1e-3)


def test_cfg_mixes_eps_only_and_takes_the_variance_from_the_conditional_half():
    head, cond, uncond = make_cfg_head()
    x, t = torch.randn(10, 3), torch.randint(0, T, (10,))
    with torch.no_grad():
        eps_c, v_c = head(x, t, cond)
        eps_u, v_u = head(x, t, uncond)
        eps, v = head.guided(x, t, cond, uncond, 2.5)
    assert torch.allclose(eps, eps_u + 2.5 * (eps_c - eps_u), rtol=1e-5, atol=1e-6)
    assert torch.allclose(v, v_c, rtol=1e-5, atol=1e-6) and not torch.allclose(v, v_u, atol=1e-3)


# ---------------------------------------------------------------- construction

@pytest.mark.parametrize(("knob", "kwargs"), [
    ("bits_per_step", {"bits_per_step": 0}),
    ("cond_dim", {"cond_dim": 2.5}),
    ("width", {"width": 0}),
    ("depth", {"depth": -1}),
    ("train_steps", {"train_steps": 1}),
    ("sampling_steps", {"sampling_steps": 1}),
    ("sampling_steps", {"train_steps": 50, "sampling_steps": 100}),
    ("batch_mul", {"batch_mul": 0}),
    ("learn_sigma", {"learn_sigma": "yes"}),
    ("frequency_dim", {"frequency_dim": True}),
])
def test_constructor_errors_name_their_argument(knob, kwargs):
    args = {"cond_dim": 8, "bits_per_step": 4, "width": 8, "depth": 1} | kwargs
    with pytest.raises(ConfigError) as err:
        DiffusionHead(**args)
    assert err.value.knob == knob


def test_config_builds_the_head_and_names_the_knob(compose_train):
    from barlab.config.instantiate import instantiate_checked

    cfg = compose_train(["head=diffusion"])
    head = instantiate_checked(cfg.head, "head", cond_dim=32, bits_per_step=4)
    assert isinstance(head, DiffusionHead) and head.token_type == "continuous"
    assert (head.sampling_steps, head.train_steps, head.batch_mul, head.learn_sigma) == (100, 1000, 4, True)
    smoke = instantiate_checked(compose_train(["experiment=smoke", "head=diffusion"]).head, "head", cond_dim=32,
                                bits_per_step=4)
    assert smoke.sampling_steps == 20                # configs/head_preset/experiment/diffusion_smoke.yaml
    cfg = compose_train(["experiment=smoke", "head=diffusion", "head.sampling_steps=2000"])
    with pytest.raises(ConfigError) as err:
        instantiate_checked(cfg.head, "head", cond_dim=32, bits_per_step=4)
    assert err.value.knob == "head.sampling_steps"


def test_clip_x0_clamps_the_predicted_x0_and_none_is_mar_s_path(monkeypatch):
    """A denoiser that predicts ε̂ = 0 sends x̂0 = x_t/√ᾱ_t to about ±1e4 at the first step. The last respaced
    step has ᾱ_prev = 1, so its mean is x̂0 itself: with ``clip_x0 = c`` every sample lies in [−c, c]."""
    head = DiffusionHead(4, 2, width=8, depth=1, learn_sigma=False, sampling_steps=10)
    monkeypatch.setattr(head.net, "forward", lambda x, t, z: torch.zeros_like(x))
    cond = torch.zeros(200, 4)

    def run(**kw):
        return head.sample(cond, None, 1.0, generator=torch.Generator().manual_seed(0), **kw)

    free, clipped = run(), run(clip_x0=0.5)
    assert free.abs().max() > 100                                     # MAR's sampler: no clamp
    assert clipped.abs().max() <= 0.5 + 1e-6 and (clipped.abs() > 0.5 - 1e-6).any()      # at the bound
    assert torch.equal(run(clip_x0=None), free)                       # None is MAR's path, unchanged
    # at the schedule level: x̂0 is clamped before the posterior mean, which is built from the clamped x̂0
    sch = head.sample_schedule
    x_t, t = torch.tensor([[3.0, -3.0]]), torch.tensor([9])
    mean, _, x0 = sch.p_mean_variance(torch.zeros(1, 2), None, x_t, t, clip_x0=1.0)
    assert torch.equal(x0, torch.tensor([[1.0, -1.0]]))
    assert torch.allclose(mean, sch.q_posterior(x0, x_t, t)[0])
    with pytest.raises(ConfigError, match="clip_x0: must be a positive number"):
        run(clip_x0=0)


def test_a_bit_head_refuses_clip_x0_in_one_line():
    from barlab.generator import ARBackbone, BitwiseHead
    from barlab.generator.sampler import ARSampler

    backbone = ARBackbone(4, (2, 2), 3, width=16, depth=1, heads=2, cond_dim=8)
    sampler = ARSampler(backbone, BitwiseHead(8, 4))
    with pytest.raises(ConfigError, match="clip_x0: only the diffusion head predicts x0"):
        sampler.sample(torch.arange(2), clip_x0=4)

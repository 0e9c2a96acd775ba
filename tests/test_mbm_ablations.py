"""The MBM head's masking ablations (paper §5.4) as knobs: the mask-ratio rules against their analytic
statistics, the fully masked share, random fill at training and sampling, and the defaults unchanged.

Tolerances. Each statistic is an average over n independent tokens: a share p has standard error
sqrt(p(1 − p)/n), a mean has sd/sqrt(n). A check allows 5 standard errors (a false failure about once in
1.7 million checks under the normal approximation) plus 3/n for the discreteness of a rare count (at
p = 9e-6 and n = 200k the expected count is 1.8; the check allows up to 11).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from barlab.generator import MBMHead
from barlab.generator.heads.mask_ratio import draw_mask_ratio

STD = 0.8


def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def analytic(dist: str, k: int, share: float) -> dict[str, float]:
    """P(all k bits masked), E[r] (r clamped to [1/k, 1]) and P(r >= 0.9) of one rule mixed with ``share``
    fully masked tokens. All k bits are masked when round(k r) = k, i.e. r >= (k − 0.5)/k."""
    top = (k - 0.5) / k
    if dist == "logit_normal":  # r = 1 − sigmoid(σ z): r >= a  <=>  z <= logit(1 − a)/σ
        p_all = normal_cdf(logit(1 - top) / STD)
        p_90 = normal_cdf(logit(0.1) / STD)
        z = np.linspace(-12.0, 12.0, 480_001)                     # trapezoid quadrature, step 5e-5
        r = np.clip(1 - 1 / (1 + np.exp(-STD * z)), 1 / k, 1)
        mean = float(np.trapezoid(r * np.exp(-z**2 / 2) / math.sqrt(2 * math.pi), z))
    elif dist == "uniform":     # r ~ U[1/k, 1]
        p_all = (1 - top) / (1 - 1 / k)
        p_90 = 0.1 / (1 - 1 / k)
        mean = (1 + 1 / k) / 2
    else:                       # cosine: r = cos(π u / 2); P(r >= a) = (2/π) acos(a); E = 2/π before the clamp
        p_all = 2 / math.pi * math.acos(top)
        p_90 = 2 / math.pi * math.acos(0.9)
        u0 = 2 / math.pi * math.acos(1 / k)                       # r < 1/k for u > u0: the clamp adds
        mean = 2 / math.pi + (1 - u0) / k - 2 / math.pi * (1 - math.sqrt(1 - 1 / k**2))
    mix = lambda p: share + (1 - share) * p                       # noqa: E731
    return {"p_all": mix(p_all), "mean_r": mix(mean), "p_r90": mix(p_90)}


def test_the_analytic_values_are_the_stated_facts():
    ln16 = analytic("logit_normal", 16, 0.0)
    assert logit(1 / 32) / STD == pytest.approx(-4.29, abs=0.01)
    assert ln16["p_all"] == pytest.approx(9e-6, rel=0.1)
    assert ln16["mean_r"] == pytest.approx(0.5, abs=0.002)       # 0.5 by symmetry, plus the small clamp
    assert analytic("cosine", 16, 0.0)["p_r90"] == pytest.approx(0.2871, abs=1e-4)
    assert analytic("cosine", 10**6, 0.0)["mean_r"] == pytest.approx(2 / math.pi, abs=1e-5)
    assert analytic("uniform", 16, 0.0)["mean_r"] == pytest.approx(17 / 32)


CASES = [(dist, share) for share in (0.0, 0.1) for dist in ("logit_normal", "uniform", "cosine")]


@pytest.mark.parametrize("k, n", [(16, 200_000), (256, 20_000)])
@pytest.mark.parametrize("dist, share", CASES)
def test_mask_statistics_match_the_rule(dist, share, k, n):
    """Through ``mask_tokens``: the share of fully masked tokens (from the mask itself), the mean ratio and
    the share with r >= 0.9 against their analytic values (k = 256 with fewer tokens: the mask is n × 256)."""
    head = MBMHead(4, k, width=8, depth=1, fourier_dim=4, steps=1, mask_ratio_dist=dist, full_mask_share=share)
    _, mask, ratio = head.mask_tokens(torch.zeros(n, k), torch.Generator().manual_seed(k + int(10 * share)))
    ratio = ratio.double()
    want = analytic(dist, k, share)
    got = {"p_all": mask.all(dim=-1).double().mean().item(), "mean_r": ratio.mean().item(),
           "p_r90": (ratio >= 0.9).double().mean().item()}
    tol = {"p_all": 5 * math.sqrt(want["p_all"] * (1 - want["p_all"]) / n) + 3 / n,
           "mean_r": 5 * ratio.std().item() / math.sqrt(n),
           "p_r90": 5 * math.sqrt(want["p_r90"] * (1 - want["p_r90"]) / n) + 3 / n}
    for key in want:
        assert abs(got[key] - want[key]) <= tol[key], (key, got[key], want[key], tol[key])
    assert ratio.min() >= 1 / k - 1e-7 and ratio.max() <= 1.0
    assert torch.equal(mask.sum(-1), torch.round(k * ratio.float()).long().clamp(min=1))


def test_full_mask_share_masks_that_share_and_draws_nothing_at_zero():
    n, k = 100_000, 16
    r = draw_mask_ratio("uniform", n, k, generator=torch.Generator().manual_seed(0), full_mask_share=0.3)
    base = draw_mask_ratio("uniform", n, k, generator=torch.Generator().manual_seed(0))
    changed = r != base                         # the same rule draw first; then some tokens are set to r = 1
    assert torch.all(r[changed] == 1.0)
    assert abs((r == 1.0).double().mean().item() - (0.3 + 0.7 * 0.0)) < 5 * math.sqrt(0.21 / n) + 3 / n
    # at share 0 the official rule draws exactly n normals and nothing else from the generator
    g = torch.Generator().manual_seed(1)
    draw_mask_ratio("logit_normal", n, k, generator=g, full_mask_share=0.0)
    ref = torch.Generator().manual_seed(1)
    torch.randn(n, generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())


# ---------------------------------------------------------------- the defaults are the official draw, unchanged

# mask_tokens on these inputs, recorded from the head before the ablation knobs existed
FIXTURE = {
    (8, 123): ([[0, 1, 2, 2, 2, 2, 0, 1], [2, 2, 1, 1, 0, 1, 0, 1], [0, 2, 1, 0, 0, 2, 1, 2],
                [1, 0, 2, 2, 0, 2, 0, 1], [2, 2, 0, 0, 2, 0, 0, 1], [0, 2, 2, 2, 1, 1, 2, 2]],
               "9037e23e0c5f613e1ae8a43e5c05be3ea46cd93e98a7123f"),
    (16, 7): ([[1, 2, 1, 0, 2, 2, 2, 1, 0, 1, 0, 2, 2, 1, 2, 0], [0, 2, 2, 2, 0, 2, 2, 2, 2, 2, 2, 1, 2, 0, 2, 2],
               [0, 1, 1, 2, 0, 1, 2, 0, 2, 1, 2, 0, 0, 1, 2, 2], [0, 0, 2, 2, 1, 2, 2, 2, 0, 2, 0, 0, 0, 2, 1, 0]],
              "6e54e43ee6113c3fe034cd3e4c95d53e"),
}
# sample() of a randomized 8-bit head (below), recorded the same way
SAMPLE_FIXTURE = [[0, 1, 1, 1, 0, 0, 1, 0], [0, 1, 1, 1, 0, 0, 1, 0], [0, 1, 0, 1, 1, 0, 0, 0],
                  [0, 1, 0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0, 1, 0]]


@pytest.mark.parametrize("k, seed", list(FIXTURE))
def test_default_mask_tokens_is_bit_identical_to_the_recorded_official_draw(k, seed):
    masked_want, ratio_hex = FIXTURE[(k, seed)]
    n = len(masked_want)
    head = MBMHead(4, k, width=8, depth=1, fourier_dim=4)
    bits = torch.randint(0, 2, (n, k), generator=torch.Generator().manual_seed(seed)).float()
    g = torch.Generator().manual_seed(seed + 1)
    masked, mask, ratio = head.mask_tokens(bits, g)
    assert masked.tolist() == masked_want and torch.equal(mask, masked == 2)
    assert ratio.numpy().tobytes().hex() == ratio_hex                # every fp32 bit of r
    ref = torch.Generator().manual_seed(seed + 1)                    # consumed: n normals, then n·k uniforms
    torch.randn(n, generator=ref)
    torch.rand((n, k), generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())


def randomized_head(**kwargs) -> MBMHead:
    torch.manual_seed(0)
    head = MBMHead(4, 8, width=16, depth=1, fourier_dim=4, steps=3, **kwargs)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 1.0)
    return head


def test_default_sample_is_the_recorded_official_sample():
    head = randomized_head()
    cond = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    out = head.sample(cond, None, 1.0, temperature=1.0, generator=torch.Generator().manual_seed(9))
    assert out.long().tolist() == SAMPLE_FIXTURE


def test_a_stored_head_config_without_the_knobs_loads_with_the_official_defaults():
    old = {"_target_": "barlab.generator.MBMHead", "width": 16, "depth": 1, "mlp_ratio": 2.0, "allocation": None,
           "steps": 4, "mask_ratio_std": 0.8, "unmasked_weight": 0.1, "fourier_dim": 4}
    head = instantiate(old, cond_dim=4, bits_per_step=8)
    assert (head.mask_ratio_dist, head.mask_ratio_mean, head.full_mask_share, head.masked_fill) == (
        "logit_normal", 0.0, 0.0, "mask")


# ---------------------------------------------------------------- random fill

def test_random_fill_trains_on_random_bits_and_the_ratio():
    k, n, d = 16, 4000, 4
    head = MBMHead(d, k, width=16, depth=1, fourier_dim=4, masked_fill="random")
    seen = {}
    head.bit_embed.register_forward_pre_hook(lambda m, args: seen.update(embedded=args[0].clone()))
    head.fourier.register_forward_pre_hook(lambda m, args: seen.update(fourier_in=args[0].clone()))
    bits = torch.ones(n, k)                                 # all ones: a masked bit that reads 0 was filled
    head.loss(torch.randn(n, d), bits, generator=torch.Generator().manual_seed(2))
    masked, mask, ratio = head.mask_tokens(bits, torch.Generator().manual_seed(2))   # the same draw
    assert torch.equal(seen["embedded"], masked) and torch.equal(seen["fourier_in"], ratio)
    assert not (seen["embedded"] == 2).any()                # never the [M] value
    assert torch.equal(masked[~mask], bits.long()[~mask])   # unmasked bits are the true ones
    filled = masked[mask].double()
    assert abs(filled.mean().item() - 0.5) < 5 * math.sqrt(0.25 / filled.numel())   # fair random bits
    # the ratio is the official draw, so the head knows how many bits are corrupted
    default = MBMHead(d, k, width=16, depth=1, fourier_dim=4)
    _, mask_m, ratio_m = default.mask_tokens(bits, torch.Generator().manual_seed(2))
    assert torch.equal(mask, mask_m) and torch.equal(ratio, ratio_m)


def test_random_fill_samples_with_random_bits_in_the_still_masked_positions():
    head = randomized_head(masked_fill="random", allocation=[2, 2, 4])
    n = 64
    fed = []
    head.register_forward_pre_hook(lambda m, args: fed.append((args[0].clone(), args[2].clone())))
    trace = []
    cond = torch.randn(n, 4, generator=torch.Generator().manual_seed(3))
    out = head.sample(cond, None, 1.0, temperature=1.0, generator=torch.Generator().manual_seed(9),
                      on_step=lambda s, b: trace.append(b.clone()))
    assert len(fed) == 3 and set(out.unique().tolist()) <= {0.0, 1.0}
    before = [torch.full((n, 8), 2)] + trace[:-1]           # the state each step starts from
    for s, ((bits, ratio), b) in enumerate(zip(fed, before)):
        assert not (bits == 2).any(), s                      # the head never sees [M]
        fixed = b != 2
        assert torch.equal(bits[fixed], b[fixed])            # fixed bits are fed as they are
        assert torch.all(ratio == 1 - [0, 2, 4][s] / 8)      # the ratio input is the still-masked share
        assert (~fixed).sum(-1).eq(8 - [0, 2, 4][s]).all()
    assert abs(fed[0][0].double().mean().item() - 0.5) < 5 * math.sqrt(0.25 / (n * 8))
    assert not torch.equal(fed[1][0][before[1] == 2], fed[0][0][before[1] == 2])   # fresh bits every step
    # the [M] head on the same weights feeds 2s instead, and samples differently
    official = randomized_head(allocation=[2, 2, 4])
    seen = []
    official.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    official.sample(cond, None, 1.0, temperature=1.0, generator=torch.Generator().manual_seed(9))
    assert (seen[0] == 2).all()
